"""One report over every registered decoder: speed, τ, NFE and quality on the same prompts.

  python -m benchmarks.report [--workdirs=runs/tiny[,runs/mdlm,...]] [--models=draft=runs/d]
      [--num_prompts=8] [--max_new_tokens=64] [--temperatures=0,1] [--decoders=all]
      [--set=NAME.FIELD=VALUE ...] [--out=benchmarks/results/report.md]

Every decoder in `decoding.registry` (new modules register themselves) runs on held-out
files of the first model's corpus at every temperature and is grouped by family. Runs are
loaded and decoders built and run through the `workbench`. A decoder runs on the first
workdir whose `ModelKind` it reads (its declared `model_kinds`; a run of exactly those
families first, e.g. an AR run before a WeDLM one for a speculative decoder), AR on every one
it reads; decoders that need a model no workdir provides, or whose extra models (e.g. a draft
`*_workdir` setting) are not given, are listed as skipped with the reason, as is any decoder
that fails.

Columns: τ = tokens per target forward (bonus token counted); NFE/token = all forward passes
(target + draft/heads) per generated token; tokens/s excludes compilation; speedup = tokens/s
over AR's on the same prompts and temperature. Quality, from an AR judge model (the first AR
workdir, `--judge_workdir` to change): the judge's perplexity of the generated text given the
prompt (lower = more likely under the AR model; lossless methods equal AR's) and the mean
per-sample unigram entropy of the generated tokens in bits (as MDLM/ReMDM report beside
generative perplexity: repetitive text has low perplexity *and* low entropy). Plots: speed
against perplexity, and acceptance by position (the fraction of steps committing >= k tokens,
from every decoder's step histogram). The rows are also written as JSON beside the markdown;
`--replot` rewrites the markdown and plots from it without running anything.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
import os
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import cli
import workbench
from benchmarks import common
from benchmarks import report_files
from decoding import SamplingConfig, registry
from models import kind as kind_lib


@dataclasses.dataclass
class Model:
  """A run offered to the report: its workbench and the prompts (the same texts for all)."""
  bench: workbench.Workbench
  prompts: list[list[int]]
  texts: list[str]

  @property
  def name(self) -> str:
    return self.bench.name

  @property
  def kind(self) -> kind_lib.ModelKind:
    return self.bench.kind


def decodes(cls: Any, kind: kind_lib.ModelKind) -> bool:
  """Whether decoder class `cls` reads a model of `kind` (its declared `model_kinds`)."""
  return kind_lib.accepts(cls.model_kinds, kind)


def offer(benches: Sequence[workbench.Workbench], *, num_prompts: int, prompt_chars: int
          ) -> list[Model]:
  """The runs offered to the report, with the same held-out texts (of the first run's
  corpus) as prompts for all of them."""
  texts = workbench.heldout_texts(benches[0].config.get('data'), num_prompts, prompt_chars)
  return [Model(b, [b.tokenizer.encode_prompt(t) for t in texts], texts) for b in benches]


def default_judge(models: Sequence[Model]) -> Model:
  """The first plain AR run (causal, no mask), else the first run."""
  return next((m for m in models if kind_lib.families(m.kind) == {'autoregressive'}),
              models[0])


def targets(name: str, models: Sequence[Model]) -> tuple[list[Model], str]:
  """The workdirs decoder `name` may run on, in order (runs of exactly the families it
  reads first), or ([], why none fits)."""
  cls = registry.get(name)
  fits = [m for m in models if decodes(cls, m.kind)]
  fits.sort(key=lambda m: not kind_lib.families(m.kind) <= set(cls.model_kinds))
  if fits:
    return fits, ''
  needs = ' or '.join(kind_lib.FAMILIES.get(f, f) for f in cls.model_kinds)
  return [], (f'needs {needs}; the workdirs given are '
              f'{sorted({m.kind.describe() for m in models})}')


def build(name: str, temperature: float, target: Model, extra_workdirs: dict[str, str],
          settings: dict[str, Any]) -> tuple[Any, str]:
  """(decoder for `target`, '') or (None, the reason it cannot be built)."""
  try:
    dec = target.bench.decoder(name, SamplingConfig(temperature=temperature), settings,
                               runs=extra_workdirs)
  except (ValueError, TypeError, KeyError) as e:
    return None, f'cannot be built with these settings: {e}'
  missing = target.bench.missing_runs(dec)
  if missing:
    return None, ('needs model(s) ' + ', '.join(f'{k!r} ({v or "not set"})'
                                                for k, v in missing.items())
                  + f'; pass --models={list(missing)[0]}=DIR or --set={name}.FIELD=DIR')
  return dec, ''


def run_one(dec: Any, target: Model, *, max_new_tokens: int, seed: int,
            repeats: int = 5) -> report_files.Row:
  """Runs `dec` on all prompts `repeats` times (compiled once); tokens/s from the median."""
  tok = target.bench.tokenizer
  walls, first = [], None
  for _ in range(max(repeats, 1)):
    rows, stats = target.bench.run_one(dec, target.prompts, max_new_tokens=max_new_tokens,
                                       seed=seed)
    first = first or (rows, stats)
    walls.append(stats.wall_time_s)
  rows, stats = first
  return report_files.Row(
      method=dec.name, family=type(dec).family, lossless=type(dec).lossless,
      temperature=dec.sampling.temperature, model=target.name, tau=stats.tau,
      nfe_per_token=(stats.target_forwards + stats.other_forwards) / max(stats.generated, 1),
      tokens_per_s=stats.generated / max(float(np.median(walls)), 1e-9),
      generated=stats.generated, compile_s=stats.compile_time_s,
      step_hist=list(stats.step_tokens_hist), tokens=[r.tokens for r in rows],
      texts=[tok.decode(r.tokens) for r in rows])


@functools.partial(jax.jit, static_argnums=0)
def _next_token_nll(model: Any, params: Any, tokens_BxT: jax.Array, positions_BxT: jax.Array
                    ) -> jax.Array:
  """[B, T-1] -log p(token t+1 | tokens <= t) under `model`."""
  logits = model.apply({'params': params}, tokens_BxT, positions_BxT).logits_BxTxV
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, tokens_BxT[:, 1:, None], axis=-1)[..., 0]


def judge_quality(judge: Model, prompt_texts: Sequence[str], gen_texts: Sequence[str]
                  ) -> tuple[float, float]:
  """(perplexity of the generated text given the prompt, mean unigram entropy in bits)."""
  tok, model, params = judge.bench.tokenizer, judge.bench.model, judge.bench.params
  seqs, starts, entropies = [], [], []
  for p, g in zip(prompt_texts, gen_texts):
    prompt, gen = tok.encode(p, add_bos=True), tok.encode(g)
    if gen:
      counts = np.unique(gen, return_counts=True)[1] / len(gen)
      entropies.append(float(-(counts * np.log2(counts)).sum()))
    seqs.append((prompt + gen)[:model.cfg.max_seq_len])
    starts.append(len(prompt))
  if not entropies:
    return float('nan'), float('nan')
  T = int(math.ceil(max(map(len, seqs)) / 64) * 64)
  tokens = np.zeros((len(seqs), T), np.int32)
  positions = np.full((len(seqs), T), -1, np.int32)
  scored = np.zeros((len(seqs), T), bool)  # token t+1 is scored from position t
  for b, (s, start) in enumerate(zip(seqs, starts)):
    tokens[b, :len(s)], positions[b, :len(s)] = s, np.arange(len(s))
    scored[b, start - 1:len(s) - 1] = True

  per_token = np.asarray(_next_token_nll(model, params, jnp.asarray(tokens),
                                         jnp.asarray(positions)))
  mask = scored[:, :-1]
  return float(np.exp(per_token[mask].sum() / max(mask.sum(), 1))), float(np.mean(entropies))


def _score(row: report_files.Row, rows: Sequence[report_files.Row], judge: Model,
           target: Model) -> None:
  """Fills quality, the speedup against AR on the same model and temperature, and whether
  the tokens equal AR's at temperature 0."""
  row.perplexity, row.entropy_bits = judge_quality(judge, target.texts, row.texts)
  ar = next((r for r in rows if r.method == 'ar' and r.model == row.model
             and r.temperature == row.temperature), None)
  if row.method == 'ar':
    row.speedup = 1.0
  elif ar is not None:
    row.speedup = row.tokens_per_s / max(ar.tokens_per_s, 1e-9)
    if row.temperature == 0:
      row.same_as_ar = 'yes' if row.tokens == ar.tokens else 'no'


def run_report(models: Sequence[Model], *, decoders: Sequence[str] | None = None,
               temperatures: Sequence[float] = (0.0, 1.0), max_new_tokens: int = 64,
               seed: int = 0, repeats: int = 5, extra_workdirs: dict[str, str] | None = None,
               settings: dict[str, dict[str, Any]] | None = None, judge: Model | None = None,
               log=print) -> tuple[list[report_files.Row], list[tuple[str, str]]]:
  """Runs every decoder (default: all registered) at every temperature.

  Returns (rows, skipped [(decoder, reason)]). AR runs first, on every model it decodes; the
  speedups and the 'same tokens as AR at T=0' column are relative to AR on the same model.
  Every other decoder runs on the first compatible model that does not refuse it.
  """
  names = list(decoders or registry.names())
  names.sort(key=lambda n: (n != 'ar', registry.get(n).family, n))
  judge = judge or default_judge(models)
  rows: list[report_files.Row] = []
  skipped: list[tuple[str, str]] = []
  for name in names:
    fits, reason = targets(name, models)
    if not fits:
      skipped.append((name, reason))
      log(f'skip {name}: {reason}')
      continue
    refusals: dict[float, str] = {}
    for temperature in temperatures:
      # AR, the baseline, runs on every model; the others on the first that accepts them.
      reasons = []
      for target in fits:
        dec, reason = build(name, temperature, target, extra_workdirs or {},
                            (settings or {}).get(name, {}))
        if dec is None:
          reasons.append(reason)
          break  # the settings, not the model, are the problem
        try:
          row = run_one(dec, target, max_new_tokens=max_new_tokens, seed=seed,
                        repeats=repeats)
        except Exception as e:  # pylint: disable=broad-except
          # A ValueError is a decoder refusing this model with its own message (e.g. "needs
          # an adapter in the target run"): try the next model. Anything else is a failure.
          first_line = str(e).splitlines()[0][:300] if str(e) else ''
          kind = 'refused' if isinstance(e, ValueError) else 'failed'
          reasons.append(f'{kind} by {target.name}: {type(e).__name__}: {first_line}')
          log(f'{kind} {name} T={temperature:g} on {target.name}: {type(e).__name__}: {e}')
          if kind == 'failed':
            break
          continue
        _score(row, rows, judge, target)
        rows.append(row)
        reasons = []
        log(f'{name:24s} T={temperature:g} on {row.model}: tau {row.tau:.2f}, '
            f'{row.tokens_per_s:.0f} tok/s, ppl {row.perplexity:.2f}')
        if name != 'ar':
          break
      if reasons:
        refusals[temperature] = '; '.join(reasons)
    if len(refusals) == len(temperatures) and len(set(refusals.values())) == 1:
      skipped.append((name, refusals[temperatures[0]]))
    else:
      skipped += [(f'{name} (T={t:g})', why) for t, why in refusals.items()]
  return rows, skipped


def define_flags() -> Any:
  """The command-line flags (defined only when run as a script, so importing this module
  from notebooks or tests adds no absl flags)."""
  f = flags
  return dict(
      workdirs=f.DEFINE_list('workdirs', ['runs/tiny'], 'Workdirs of the models to use.'),
      models=f.DEFINE_list('models', [], 'Extra models for decoders: NAME=WORKDIR, e.g. '
                           'draft=runs/draft fills a decoder setting draft_workdir.'),
      judge=f.DEFINE_string('judge_workdir', None, 'AR model scoring quality (default: the '
                            'first AR workdir).'),
      decoders=f.DEFINE_list('decoders', [], 'Decoders to run (default: all registered).'),
      set=f.DEFINE_multi_string('set', [], 'A decoder setting: NAME.FIELD=VALUE.'),
      num_prompts=f.DEFINE_integer('num_prompts', 8, 'Held-out documents used as prompts.'),
      prompt_chars=f.DEFINE_integer('prompt_chars', 200, 'Characters of each prompt.'),
      max_new_tokens=f.DEFINE_integer('max_new_tokens', 64, 'Tokens generated per prompt.'),
      temperatures=f.DEFINE_list('temperatures', ['0', '1'], 'Sampling temperatures.'),
      seed=f.DEFINE_integer('seed', 0, 'Sampling seed.'),
      repeats=f.DEFINE_integer('repeats', 5, 'Timed runs per decoder (median reported).'),
      out=f.DEFINE_string('out', os.path.join(common.RESULTS_DIR, 'report.md'),
                          'Markdown file to write (plots and JSON go beside it).'),
      replot=f.DEFINE_bool('replot', False, 'Only rewrite the markdown and plots from the '
                           'JSON of the previous run.'))


def parse_settings(items: Sequence[str]) -> dict[str, dict[str, Any]]:
  """['spec.gamma=4', ...] -> {'spec': {'gamma': 4}} (values parsed as Python literals)."""
  out: dict[str, dict[str, Any]] = {}
  for item in items:
    key, sep, value = item.partition('=')
    name, dot, field = key.partition('.')
    if not sep or not dot:
      raise ValueError(f'--set expects NAME.FIELD=VALUE, got {item!r}.')
    try:
      parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      parsed = value
    out.setdefault(name, {})[field] = parsed
  return out


def main(argv, flag_values: dict[str, Any]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.quiet_logging(sys.argv)
  v = {k: holder.value for k, holder in flag_values.items()}
  if v['replot']:
    print('Wrote ' + ', '.join(report_files.replot(v['out'])))
    return
  benches = [workbench.Workbench.load(w) for w in v['workdirs']]
  if v['judge']:
    benches.append(workbench.Workbench.load(v['judge']))
  models = offer(benches, num_prompts=v['num_prompts'], prompt_chars=v['prompt_chars'])
  judge = models.pop() if v['judge'] else None
  temps = [float(t) for t in v['temperatures']]
  load = os.getloadavg()[0]
  rows, skipped = run_report(
      models, decoders=v['decoders'] or None, temperatures=temps,
      max_new_tokens=v['max_new_tokens'], seed=v['seed'], repeats=v['repeats'],
      extra_workdirs=dict(item.split('=', 1) for item in v['models']),
      settings=parse_settings(v['set']), judge=judge)
  judge_name = (judge or default_judge(models)).name
  runs = ", ".join(f"`{m.bench.workdir}` ({m.kind.describe()})" for m in models)
  setup = (f'Models: {runs}; judge: '
           f'`{judge_name}`. Prompts: {len(models[0].texts)} held-out documents, first '
           f'{v["prompt_chars"]} characters; {v["max_new_tokens"]} new tokens, batch of all '
           f'prompts, median of {v["repeats"]} timed runs; temperatures '
           f'{", ".join(map(str, temps))}, seed {v["seed"]}. Speed ratios are from one run on '
           'one machine; absolute tokens/s only mean something on a GPU/TPU. Host load '
           f'average at the start: {load:.1f} on {os.cpu_count()} cores (a loaded host makes '
           'the timings noisy).')
  files = report_files.write(v['out'], rows, skipped, setup, common.provenance())
  print('Wrote ' + ', '.join(files))


if __name__ == '__main__':
  _FLAGS = define_flags()
  app.run(lambda argv: main(argv, _FLAGS))
