"""Diffusion decoders side by side: NFE per token, tokens/s and quality, against one token per
step and against our AR model of the same size, in one run.

  python -m benchmarks.diffusion --runs=runs/diffusion            # after the training runs:
  # sudoku4 (configs/diffusion_tasks.py:sudoku4,mdlm and :sudoku4,ar),
  # code (configs/diffusion_lm.py:ar, :mdlm, :wedlm) in RUNS/{sudoku4_mdlm, sudoku4_ar,
  # code_ar, code_mdlm, code_wedlm}; a missing run skips its part.
  python -m benchmarks.diffusion --parts=assd --out=diffusion_assd  # RUNS/sudoku4_asarm
  # (configs/diffusion_tasks.py:sudoku4,asarm): ASSD against sequential decoding

Parts:
  sudoku4  exact-match accuracy on held-out puzzles: every diffusion decoder on the masked
           diffusion model (one block = the whole answer, so the order is fully adaptive; one
           left-to-right row, block_size=1, for the value of the order),
           and AR decoding of the AR model trained on the same rows.
  code     held-out stdlib prompts (up to 96 bytes, cut so prompt + new tokens fit the runs'
           trained length), 64 new tokens, blocks of 16: quality = our AR model's
           perplexity of the generated text (given the prompt) and the text's unigram
           entropy (degenerate repetitive text has low perplexity and low entropy); the
           approximate caches' drift against recomputation; guided diffusion and DiffuSpec
           with the AR model; WeDLM against AR decoding of the same WeDLM backbone.
  assd     the any-subset AR model on the sudoku4 puzzles: ASSD at several draft lengths
           against sequential decoding in the same order (left to right, random).
Writes benchmarks/results/OUT.md and OUT_speed_quality.png (OUT: --out, default
diffusion). Greedy decoding.
Speed ratios are measured in the same run; on a CPU they say little about a GPU, where a
forward over 16-64 tokens costs about the same as over one (memory-bound decoding).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import data
import workbench
from benchmarks import common
from benchmarks import diffusion_goals
from data.tasks import exact_match

Row = diffusion_goals.Row  # a measured decoder (what the goals judge)
LOADED: dict[str, str] = {}  # run name -> what the report says about it
_RUNS: dict[str, Any] = {}  # every run restored once, as a target or an extra run


def open_run(path: str) -> workbench.Workbench | None:
  """The workbench of the run at `path`, or None if it has no checkpoint yet."""
  if not workbench.has_checkpoint(path):
    return None
  bench = workbench.Workbench.load(path, runs=_RUNS)
  LOADED[bench.name] = workbench.describe_run(bench)
  return bench


def run(name: str, settings: dict[str, Any], target: workbench.Workbench,
        prompts: Sequence[Sequence[int]], max_new: int, batch_size: int = 64):
  """One decoder over all prompts, greedy: (rows, stats, decoder); the runs it declares
  (guide, drafter) come from its settings."""
  dec = target.decoder(name, settings=settings)
  rows, stats = target.run_one(dec, prompts, max_new_tokens=max_new, batch_size=batch_size)
  return rows, stats, dec


def describe(dec) -> str:
  skip = {'sampling', 'mask_id', 'drafter', 'guide', 'measure_drift', 'shift', 'block_causal',
          'block_size'}
  defaults = {f.name: f.default for f in dataclasses.fields(type(dec))}
  return ', '.join(f'{k}={v}' for k, v in dataclasses.asdict(dec).items()
                   if k not in skip and v != defaults.get(k))


def make_row(part, model, name, dec, rows, stats, quality, quality_name, note='',
             **extra) -> Row:
  toks = [r.tokens for r in rows]
  gen = max(stats.generated, 1)
  settings = ', '.join(x for x in (describe(dec), note) if x)
  return Row(part=part, model=model, decoder=name, settings=settings,
             nfe_per_token=stats.target_forwards / gen,
             tokens_per_forward=gen / max(stats.target_forwards, 1),
             tokens_per_s=stats.tokens_per_s, quality=quality, quality_name=quality_name,
             extra={**{k: v for k, v in stats.extra.items()}, **extra}, tokens=toks)


# ---------------------------------------------------------------------------- sudoku

# The strict settings (threshold 0.98 / 0.99, LocalLeap 0.99/0.95 radius 1, ETE 0.99 with a
# 0.2-nat budget) were chosen on a disjoint puzzle stream (--sudoku_seed=1), never on the
# reported one: per decoder, the fastest of a small grid that stayed within about half a point
# of one token per step there. The loose ones draw the rest of the speed-quality curve.
SUDOKU_DECODERS = [  # (name, settings) on the masked-diffusion model
    ('llada', dict(tokens_per_step=1, ordering='confidence')),   # one token per step
    ('llada', dict(tokens_per_step=1, ordering='random')),       # a fixed random order
    ('llada', dict(tokens_per_step=4, ordering='confidence')),
    ('llada', dict(tokens_per_step=1, block_size=1)),             # left to right, one per step
    ('fast_dllm', dict(threshold=0.99)),
    ('fast_dllm', dict(threshold=0.98)),
    ('fast_dllm', dict(threshold=0.9)),
    ('fast_dllm', dict(threshold=0.7)),
    ('fast_dllm', dict(threshold=0.5)),
    ('localleap', dict(anchor_threshold=0.99, relaxed_threshold=0.95, radius=1)),
    ('localleap', dict(anchor_threshold=0.9, relaxed_threshold=0.6, radius=2)),
    ('ete', dict(threshold=0.99, budget=0.2, cross_block=0)),
    ('ete', dict(threshold=0.9, budget=1.0, cross_block=0)),
    ('freedave', dict(num_candidates=4)),
]


def sudoku_puzzles(tokenizer, n: int, seed: int):
  """(prompts, max_new, accuracy(rows) in %) for n held-out sudoku4 puzzles."""
  task = exact_match.get('sudoku4')
  examples = exact_match.examples(task, n, seed=seed)
  prompts = [exact_match.prompt_ids(tokenizer, p) for p, _ in examples]

  def accuracy(rows):
    return 100.0 * np.mean([task.score(p, tokenizer.decode(r.tokens))
                            for (p, _), r in zip(examples, rows)])
  return prompts, task.max_answer_chars + 1, accuracy


def sudoku_part(runs: str, n: int, seed: int = 0) -> list[Row]:
  mdlm, ar = (open_run(os.path.join(runs, r)) for r in ('sudoku4_mdlm', 'sudoku4_ar'))
  if mdlm is None:
    print('sudoku4: no masked-diffusion run; skipped.')
    return []
  prompts, max_new, accuracy = sudoku_puzzles(mdlm.tokenizer, n, seed)
  out = []
  for name, settings in SUDOKU_DECODERS:
    settings = {'block_size': max_new, 'shift': -1, 'block_causal': -1, **settings}
    note = 'left to right (block_size=1)' if settings['block_size'] == 1 else ''
    rows, stats, dec = run(name, settings, mdlm, prompts, max_new)
    out.append(make_row('sudoku4', 'mdlm', name, dec, rows, stats, accuracy(rows), 'solved %',
                        note=note))
    print(out[-1].decoder, out[-1].settings, f'{out[-1].quality:.1f}%',
          f'NFE/tok {out[-1].nfe_per_token:.2f}', flush=True)
  if ar is not None:
    rows, stats, dec = run('ar', {}, ar, prompts, max_new)
    out.append(make_row('sudoku4', 'ar', 'ar', dec, rows, stats, accuracy(rows), 'solved %'))
  return out


# ---------------------------------------------------------------------------- ASSD

ASSD_DECODERS = [  # (settings) of `assd` on the any-subset AR model; draft_len=1 = sequential
    dict(draft_len=1), dict(draft_len=2), dict(draft_len=4), dict(draft_len=8),
    dict(draft_len=16), dict(draft_len=1, ordering='random'), dict(draft_len=8, ordering='random'),
]


def assd_part(runs: str, n: int, seed: int = 0) -> list[Row]:
  """ASSD on the any-subset AR model (RUNS/sudoku4_asarm) against sequential decoding of the
  same model in the same order (draft_len=1), on the sudoku4 puzzles of `sudoku_part`."""
  asarm = open_run(os.path.join(runs, 'sudoku4_asarm'))
  if asarm is None:
    print('assd: no sudoku4_asarm run; skipped.')
    return []
  prompts, max_new, accuracy = sudoku_puzzles(asarm.tokenizer, n, seed)
  out = []
  for settings in ASSD_DECODERS:
    rows, stats, dec = run('assd', settings, asarm, prompts, max_new)
    acc = accuracy(rows)
    note = 'sequential' if dec.draft_len == 1 else (
        '' if 'draft_len' in describe(dec) else f'draft_len={dec.draft_len}')  # the default
    out.append(make_row('assd', 'asarm', 'assd', dec, rows, stats, acc, 'solved %', note=note))
    print(out[-1].decoder, out[-1].settings, f'{acc:.1f}%',
          f'NFE/tok {out[-1].nfe_per_token:.2f}', flush=True)
  return out


# ---------------------------------------------------------------------------- code

def code_prompts(tokenizer, n: int, chars: int) -> list[list[int]]:
  """Held-out stdlib text: `chars` characters from a line start about a third into a file."""
  cfg = data.DataConfig(name='python_stdlib')
  out = []
  for doc in data.load_texts(cfg, cfg.eval_split):
    if len(doc) < 3 * chars:
      continue
    start = doc.find('\n', len(doc) // 3) + 1
    text = doc[start:start + chars]
    if len(text) == chars and text.strip():
      out.append(tokenizer.encode(text, add_bos=True))
    if len(out) == n:
      break
  return out


def ar_quality(ar, prompts, generations) -> tuple[float, float]:
  """(AR perplexity of the generated tokens given the prompt, mean unigram entropy in bits)."""
  L = max(len(p) + len(g) for p, g in zip(prompts, generations))
  L = int(math.ceil(L / 32) * 32)
  toks = np.full((len(prompts), L), ar.tokenizer.pad_id, np.int32)
  w = np.zeros((len(prompts), L - 1), np.float32)
  for i, (p, g) in enumerate(zip(prompts, generations)):
    toks[i, :len(p) + len(g)] = list(p) + list(g)
    w[i, len(p) - 1:len(p) + len(g) - 1] = 1
  apply = jax.jit(lambda prm, t: ar.model.apply({'params': prm}, t).logits_BxTxV)
  logits = apply(ar.params, jnp.asarray(toks[:, :-1]))
  logp = jax.nn.log_softmax(logits, -1)
  nll = -np.asarray(jnp.take_along_axis(logp, jnp.asarray(toks[:, 1:])[..., None], -1)[..., 0])
  ppl = float(np.exp((nll * w).sum() / max(w.sum(), 1)))
  ents = []
  for g in generations:
    if g:
      c = np.bincount(np.asarray(g))
      q = c[c > 0] / len(g)
      ents.append(float(-(q * np.log2(q)).sum()))
  return ppl, float(np.mean(ents)) if ents else 0.0


def code_part(runs: str, n: int, max_new: int) -> list[Row]:
  mdlm, ar, wedlm = (open_run(os.path.join(runs, r))
                     for r in ('code_mdlm', 'code_ar', 'code_wedlm'))
  out = []
  ref = mdlm or ar or wedlm
  if ref is None:
    print('code: no runs; skipped.')
    return []
  # Prompt + generation must fit the context the models were trained on (RoPE does not
  # extrapolate: tiny CPU runs use seq_len 64, where 96-byte prompts + 64 new tokens would
  # put every generated token past the trained positions).
  trained = min(r.config['data']['seq_len'] + 1 for r in (mdlm, ar, wedlm) if r is not None)
  chars = min(96, trained - 1 - max_new)  # + <bos>; a byte per token at most
  if chars < 8:
    raise SystemExit(f'--code_tokens={max_new} leaves {chars} prompt tokens within the runs\' '
                     f'trained length {trained}; lower --code_tokens.')
  prompts = code_prompts(ref.tokenizer, n, chars)
  print(f'code: {len(prompts)} prompts of {chars} bytes + {max_new} new tokens '
        f'(trained length {trained})', flush=True)
  judge = ar or wedlm

  def quality(rows):
    if judge is None:
      return float('nan'), float('nan')
    return ar_quality(judge, prompts, [r.tokens for r in rows])

  if mdlm is not None:
    bs = 16
    configs = [
        ('llada', dict(tokens_per_step=1)),
        ('fast_dllm', dict(threshold=0.9)),
        ('fast_dllm', dict(threshold=0.9, cache='prefix', measure_drift=1)),
        ('fast_dllm', dict(threshold=0.9, cache='dual', measure_drift=1)),
        ('fast_dllm', dict(threshold=0.9, cache='dual', delay=1, measure_drift=1)),
        ('fast_dllm', dict(threshold=0.7)),
        ('fast_dllm', dict(threshold=0.5)),
        ('localleap', dict()),
        ('ete', dict(budget=1.0)),
        ('freedave', dict(num_candidates=4)),
    ]
    if ar is not None:
      configs.append(('guided_diffusion', dict(guide_threshold=0.3)))
    for name, settings in configs:
      settings = dict(settings, block_size=bs, shift=-1, block_causal=-1)
      if name == 'guided_diffusion':
        settings['guide'] = ar.workdir
      rows, stats, dec = run(name, settings, mdlm, prompts, max_new)
      ppl, ent = quality(rows)
      out.append(make_row('code', 'mdlm', name, dec, rows, stats, ppl, 'AR ppl', entropy=ent))
      print(name, out[-1].settings, f'ppl {ppl:.2f} H {ent:.2f}',
            f'NFE/tok {out[-1].nfe_per_token:.2f}', flush=True)
  if ar is not None:
    rows, stats, dec = run('ar', {}, ar, prompts, max_new)
    ppl, ent = quality(rows)
    out.append(make_row('code', 'ar', 'ar', dec, rows, stats, ppl, 'AR ppl', entropy=ent))
    if mdlm is not None:
      settings = dict(drafter=mdlm.workdir, draft_len=8, shift=-1, block_causal=0)
      rows, stats, dec = run('diffuspec', settings, ar, prompts, max_new)
      ppl, ent = quality(rows)
      out.append(make_row('code', 'ar+mdlm drafter', 'diffuspec', dec, rows, stats, ppl,
                          'AR ppl', entropy=ent))
  if wedlm is not None:
    rows, stats, dec = run('ar', {}, wedlm, prompts, max_new)
    ppl, ent = quality(rows)
    out.append(make_row('code', 'wedlm', 'ar', dec, rows, stats, ppl, 'AR ppl', entropy=ent))
    for settings in (dict(window=16, entropy_threshold=0.3, distance_penalty=0.02),
                     dict(window=16, entropy_threshold=0.8, distance_penalty=0.02)):
      rows, stats, dec = run('wedlm', dict(settings, shift=-1, block_causal=-1), wedlm,
                             prompts, max_new)
      ppl, ent = quality(rows)
      out.append(make_row('code', 'wedlm', 'wedlm', dec, rows, stats, ppl, 'AR ppl',
                          entropy=ent))
  return out


# ---------------------------------------------------------------------------- report

def plot(rows: list[Row], path: str) -> None:
  plt = common.pyplot()
  parts = sorted({r.part for r in rows})
  fig, axes = plt.subplots(1, len(parts), figsize=(6 * len(parts), 4.5), squeeze=False)
  for ax, part in zip(axes[0], parts):
    rs = [r for r in rows if r.part == part]
    for r in rs:
      ax.scatter(r.nfe_per_token, r.quality, s=30)
      ax.annotate(f'{r.decoder}\n{r.settings[:28]}' if r.settings else r.decoder,
                  (r.nfe_per_token, r.quality), fontsize=6)
    ax.axvline(diffusion_goals.GOAL_NFE, ls='--', c='gray', lw=0.8)
    ax.set_xlabel('target forwards (NFE) per generated token')
    ax.set_ylabel(rs[0].quality_name)
    ax.set_title(part)
  fig.tight_layout()
  fig.savefig(path, dpi=130)


def report(rows: list[Row]) -> str:
  header = ['part', 'model', 'decoder', 'settings', 'NFE/token', 'tokens/forward',
            'tokens/s', 'speed vs ref', 'quality', 'metric', 'other']
  body = []
  for part in sorted({r.part for r in rows}):
    rs = [r for r in rows if r.part == part]
    ref = rs[0].tokens_per_s
    for r in rs:
      other = []
      if 'entropy' in r.extra:
        other.append(f'H={r.extra["entropy"]:.2f} bits')
      if 'drift_max_abs_logit' in r.extra:
        pos = max(r.extra['drift_positions'], 1)
        other.append(f'drift max|dlogit|={r.extra["drift_max_abs_logit"]:.3g}, '
                     f'top-1 flips={r.extra["drift_top1_disagree"] / pos:.1%}')
      if 'accepted' in r.extra:
        other.append(f'acceptance={r.extra["accepted"] / max(r.extra["drafted"], 1):.1%}')
      body.append([r.part, r.model, r.decoder, r.settings or '-', r.nfe_per_token,
                   r.tokens_per_forward, r.tokens_per_s, f'{r.tokens_per_s / ref:.2f}x',
                   r.quality, r.quality_name, '; '.join(other) or '-'])
  return common.markdown_table(header, body)


def main(argv: Sequence[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--runs', default='runs/diffusion')
  ap.add_argument('--sudoku_prompts', type=int, default=512)
  ap.add_argument('--sudoku_seed', type=int, default=0,
                  help='puzzle stream; 1 is the one the strict settings were chosen on')
  ap.add_argument('--code_prompts', type=int, default=16)
  ap.add_argument('--code_tokens', type=int, default=64)
  ap.add_argument('--parts', default='sudoku4,code', help='any of sudoku4, code, assd')
  ap.add_argument('--out', default='diffusion',
                  help='results name: benchmarks/results/OUT.md and OUT_speed_quality.png')
  args = ap.parse_args(argv)
  rows: list[Row] = []
  if 'sudoku4' in args.parts:
    rows += sudoku_part(args.runs, args.sudoku_prompts, args.sudoku_seed)
  if 'code' in args.parts:
    rows += code_part(args.runs, args.code_prompts, args.code_tokens)
  if 'assd' in args.parts:
    rows += assd_part(args.runs, args.sudoku_prompts, args.sudoku_seed)
  if not rows:
    raise SystemExit(f'No trained runs under {args.runs}; see the module docstring.')
  png = os.path.join(common.RESULTS_DIR, f'{args.out}_speed_quality.png')
  os.makedirs(common.RESULTS_DIR, exist_ok=True)
  plot(rows, png)
  goal_table = common.markdown_table(['goal', 'measured', 'status'],
                                    diffusion_goals.goals(rows))
  models = '\n'.join(f'- `{k}`: {v}' for k, v in sorted(LOADED.items()))
  body = (f'Greedy decoding; speed ratios within a part are against its first row. '
          f'NFE/token = target forwards / generated tokens, where a row\'s generated tokens '
          f'run up to and including its first committed <eos>: canvas positions a diffusion '
          f'decoder fills after that are wasted forwards (a model that ends early can exceed '
          f'1 NFE/token).\n\nModels (under `{args.runs}`):\n\n{models}\n\n'
          f'## Goals\n\n{goal_table}\n\n## All decoders\n\n{report(rows)}\n\n'
          f'![speed vs quality]({args.out}_speed_quality.png)\n')
  path = common.write_results(args.out, 'Diffusion decoders: speed and quality', body)
  print(f'Wrote {path}')


if __name__ == '__main__':
  main()
