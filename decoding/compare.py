"""Run several decoders on the same prompts and compare them (used by sample.py, benchmarks).

Extra models a decoder asks for (`Decoder.extra_models()`, e.g. a draft workdir) are loaded
through the `load_extra(workdir) -> (module, params)` callback, so this module does not depend
on how checkpoints are stored.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import ml_collections

from decoding import base
from decoding import limits
from decoding import registry
from decoding import runner
from decoding import sampling as sampling_lib

Results = dict[str, tuple[list[runner.RowOutput], runner.RunStats]]


def merged_settings(specs: Sequence[str]) -> ml_collections.ConfigDict:
  """The union of the settings of the decoders named by `specs` ('NAME[:key=value...]', see
  `registry.parse_spec`), for --decoder_config.*; unknown names fail."""
  merged: dict[str, Any] = {}
  for spec in specs:
    merged.update(registry.default_settings(spec.split(':')[0].strip()).to_dict())
  c = ml_collections.ConfigDict(merged)
  c.lock()
  return c


def build_decoders(specs: Sequence[str], settings: ml_collections.ConfigDict,
                   overridden: Sequence[str], sampling: sampling_lib.SamplingConfig
                   ) -> list[tuple[str, base.Decoder]]:
  """[(label, decoder)]: each 'NAME[:key=value...]' spec built with the overridden
  --decoder_config settings it has, then its own (which win). The label names the decoder
  and its own settings, e.g. 'prompt_lookup(gamma=2)'."""
  decoders, used = [], set()
  for spec in specs:
    name, own = registry.parse_spec(spec)
    fields = {f.name for f in registry.settings_fields(name)}
    chosen = {k: settings[k] for k in overridden if k in fields}
    used.update(chosen)
    decoders.append((registry.spec_label(name, own),
                     registry.build(name, {**chosen, **own}, sampling)))
  unused = sorted(set(overridden) - used)
  if unused:
    raise ValueError(f'--decoder_config keys {unused} belong to none of {list(specs)}.')
  return decoders


def default_cache_size(prompts: Sequence[Sequence[int]], max_new_tokens: int,
                       decoders: Sequence[base.Decoder], multiple: int = 64) -> int:
  need = max(len(p) for p in prompts) + max_new_tokens + max(
      d.extra_cache_slots(max_new_tokens) for d in decoders)
  return int(math.ceil(need / multiple) * multiple)


def run_all(decoders: Sequence[base.Decoder | tuple[str, base.Decoder]], target: Any,
            target_params: Any, prompts: Sequence[Sequence[int]], *, eos_id: int, pad_id: int,
            max_new_tokens: int, cache_size: int = 0, seed: int = 0,
            batch_size: int | None = None, mesh=None,
            load_extra: Callable[[str], tuple[Any, Any]] | None = None,
            target_extras: dict[str, Any] | None = None, repeats: int = 1) -> Results:
  """Runs every decoder on the same prompts; cache_size 0 = just enough for all of them.

  `decoders`: decoders, or (label, decoder) pairs (`build_decoders`); results are keyed by
  label (default the decoder's name). `target_extras`: the target run's training extras
  (draft heads, adapters), passed to the decoders as params[name] beside params['target'].
  `repeats` > 1: every decoder is timed that many times after an untimed warm-up, passes of
  all decoders interleaved so load on the machine falls on all alike, and each keeps its
  fastest pass.
  """
  labelled = [d if isinstance(d, tuple) else (d.name, d) for d in decoders]
  decoders = [d for _, d in labelled]
  cache_size = cache_size or default_cache_size(prompts, max_new_tokens, decoders)
  if prompts and hasattr(target, 'cfg'):  # refuse a cache that cannot fit, before allocating
    limits.check_memory(target.cfg, batch_size=min(batch_size or len(prompts), len(prompts)),
                        cache_size=cache_size,
                        prompt_len=min(cache_size, max(map(len, prompts))),
                        num_devices=mesh.devices.size if mesh is not None else 1)
  results: Results = {}
  runs = []
  for label, dec in labelled:
    extras, params = [], {**(target_extras or {}), 'target': target_params}
    for name, workdir in dec.extra_models().items():
      if load_extra is None:
        raise ValueError(f'Decoder {dec.name!r} needs model {name!r} but no loader was given.')
      module, extra_params = load_extra(workdir)
      extras.append((name, module))
      params[name] = extra_params
    models = base.Models(target=target, extras=tuple(extras))
    key = label if label not in results else f'{label}#{len(results)}'
    results[key] = runner.run_decoder(dec, models, params, prompts,
                                      max_new_tokens=max_new_tokens, cache_size=cache_size,
                                      eos_id=eos_id, pad_id=pad_id, seed=seed,
                                      batch_size=batch_size, mesh=mesh)
    runs.append((key, dec, models, params))
  if repeats > 1:
    best = {key: float('inf') for key, *_ in runs}
    kw = dict(max_new_tokens=max_new_tokens, cache_size=cache_size, eos_id=eos_id,
              pad_id=pad_id, seed=seed, batch_size=batch_size, mesh=mesh)
    for _ in range(repeats):
      for key, dec, models, params in runs:
        _, stats = runner.run_decoder(dec, models, params, prompts, **kw)
        best[key] = min(best[key], stats.wall_time_s)
    for key in best:
      results[key][1].wall_time_s = best[key]
  return results


def row_json(name: str, row: runner.RowOutput, stats: runner.RunStats, tokenizer) -> dict:
  return {'decoder': name, 'prompt_index': row.index, 'prompt': tokenizer.decode(row.prompt),
          'text': tokenizer.decode(row.tokens), 'token_ids': row.tokens,
          'stats': {'generated': len(row.tokens), 'target_forwards': row.target_forwards,
                    'other_forwards': row.other_forwards, 'tau': row.tau,
                    'step_tokens_hist': row.step_tokens_hist, **row.extra},
          'run': {k: v for k, v in stats.as_dict().items() if k not in ('extra',)}}


def comparison_table(results: Results, greedy: bool = False) -> str:
  """A markdown table: one line per decoder, speedup against the first decoder.

  A speedup above tau (tokens per target forward) is timing noise, not the method (a step
  never costs less than one target forward): such a row is marked '(!)', unless the
  decoder's steps may run only part of the model (`Decoder.cheaper_steps`: SkipDecode, H2O).
  `greedy` (temperature 0): a column '= first' says whether each decoder's tokens equal the
  first decoder's; a lossless decoder whose tokens differ from a lossless first one is marked
  'NO (!)' (`mismatches`).
  """
  header = ('| decoder | family | lossless | generated | target fwd | other fwd | tau '
            '| tokens/s | speedup | compile s |' + (' = first |' if greedy else ''))
  lines = [header, '|' + '---|' * (11 if greedy else 10)]
  ref = None
  bad = set(mismatches(results)) if greedy else set()
  want = _tokens(next(iter(results.values()))[0]) if results else []
  for i, (name, (rows, s)) in enumerate(results.items()):
    cls = registry.get(s.decoder)
    ref = ref or s.tokens_per_s
    speedup = s.tokens_per_s / max(ref, 1e-9)
    flag = ' (!)' if speedup > s.tau and not s.cheaper_steps else ''
    lossless = cls.lossless and s.lossless
    same = ''
    if greedy:
      same = (' - |' if i == 0 else ' yes |' if _tokens(rows) == want else
              ' NO (!) |' if name in bad else ' no |')
    lines.append(f'| {name} | {cls.family} | {"yes" if lossless else "no"} | {s.generated} '
                 f'| {s.target_forwards} | {s.other_forwards} | {s.tau:.2f} '
                 f'| {s.tokens_per_s:.1f} | {speedup:.2f}x{flag} '
                 f'| {s.compile_time_s:.1f} |{same}')
  return '\n'.join(lines)


def _tokens(rows: Sequence[runner.RowOutput]) -> list[tuple[int, list[int]]]:
  return sorted((r.index, r.tokens) for r in rows)


def mismatches(results: Results) -> list[str]:
  """Labels of the lossless decoders whose tokens differ from the first decoder's: under
  greedy sampling (temperature 0) every lossless decoder must give the first one's tokens
  when that one is lossless too (AR). Each name here is a bug, or, rarely and in low
  precision only, a near tie between two tokens' logits that a forward over several tokens
  breaks otherwise than a forward over one."""
  items = list(results.items())
  if not items or not items[0][1][1].lossless or not registry.get(
      items[0][1][1].decoder).lossless:
    return []
  want = _tokens(items[0][1][0])
  return [name for name, (rows, s) in items[1:]
          if s.lossless and registry.get(s.decoder).lossless and _tokens(rows) != want]
