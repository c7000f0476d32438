"""SkipDecode vs early exit (LayerSkip-style) and AR: quality next to speed, on trained runs.

  python -m benchmarks.skipdecode --workdir=runs/skip_tiny --base_workdir=runs/tiny

For the AR run (`--base_workdir`) and its SkipDecode fine-tune (`--workdir`,
configs/skipdecode.py), every schedule is run two ways: skipping the lowest layers
(`skipdecode`) and exiting before the highest ones (`skipdecode:skip_from=top`, plain early
exit with the same number of layers). Schedules: a constant skip s from the first generated
token on (`schedule=0/s`) and the paper's linear rise from 0 to s over the generation
(`max_skip=s`). Both lossy. Measured:

  held-out quality  teacher-forced: the continuation of held-out documents (the last
                    `--new_tokens` tokens) scored with the schedule applied from the end of the
                    prompt on, exactly as decoding runs it (`skip_layers_BxT` for the bottom,
                    the stream after the exit layer for the top): perplexity and next-token
                    accuracy.
  generation        greedy from the held-out prompts: agreement with the same model's AR
                    tokens (position by position, and the mean length of the common prefix),
                    perplexity of the generated text under the AR run's full model (the
                    judge), layer forwards per token and tokens/s, in one run with `ar` and
                    the lossless `layerskip` (exit at half) of the same model.

Writes benchmarks/results/skipdecode.md (+ skipdecode.png). One run, one seed, greedy; the
CPU is shared, so tokens/s are indicative only.
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks import harness
from decoding import SamplingConfig
from decoding import registry
from models import heads as heads_lib
from models import layers
from workbench import Workbench


def schedules(max_skips):
  out = []
  for s in max_skips:
    out.append((f'constant {s}', f'schedule=0/{s}'))
  for s in max_skips:
    if s > 1:
      out.append((f'linear 0..{s}', f'max_skip={s}'))
  return out


def teacher_forced(bench: Workbench, tokens: list[list[int]], n: int, spec: str):
  """(perplexity, accuracy) of the last n tokens of each row under decoder `spec`'s schedule."""
  model, params = bench.model, bench.params
  cfg = model.cfg
  L = cfg.num_layers
  name, settings = registry.parse_spec(spec)
  dec = registry.build(name, settings)
  T = max(map(len, tokens)) - 1
  nll, hits, count = 0.0, 0, 0
  for row in tokens:
    P = len(row) - n
    skip_N = dec.skips(L, n) if name == 'skipdecode' else np.zeros(n, np.int64)
    skip_T = np.zeros(T, np.int32)
    skip_T[P - 1:P - 1 + n] = skip_N  # the input at P - 1 + i produces generated token i
    inp = np.zeros((1, T), np.int32)
    inp[0, :len(row) - 1] = row[:-1]
    logits = _logits(model, params, jnp.asarray(inp), jnp.asarray(skip_T[None]),
                     dec.skip_from if name == 'skipdecode' else 'bottom', L)
    logp = jax.nn.log_softmax(np.asarray(logits[0, P - 1:P - 1 + n], np.float64), -1)
    tgt = np.asarray(row[P:P + n])
    nll += -float(np.sum(np.take_along_axis(np.asarray(logp), tgt[:, None], 1)))
    hits += int(np.sum(np.argmax(np.asarray(logp), -1) == tgt))
    count += n
  return math.exp(nll / count), hits / count


_JIT = {}


def _logits(model, params, inp_1xT, skip_1xT, skip_from, L):
  key = (model, skip_from)
  if key not in _JIT:
    def f(params, inp, skip):
      if skip_from == 'bottom':
        return model.apply({'params': params}, inp, skip_layers_BxT=skip).logits_BxTxV
      # Early exit: the head reads the stream after layer L - skip - 1 (exact: tokens after
      # it exit no later, so nothing reads the layers it skips).
      out = model.apply({'params': params}, inp, return_hidden=True)
      hs = jnp.stack(out.hidden, 0)  # [L + 1, B, T, D]
      h = jnp.take_along_axis(hs, (L - skip)[None, ..., None], 0)[0]
      normed = heads_lib.final_norm(params, model.cfg, h)
      emb_VxD = heads_lib.output_embedding(params, model.cfg)
      return layers.mask_invalid_ids(jnp.einsum('BTD,VD->BTV', normed, emb_VxD), model.cfg)
    _JIT[key] = jax.jit(f)
  return _JIT[key](params, inp_1xT, skip_1xT)


def judge_perplexity(judge: Workbench, prompts, outputs) -> float:
  """Perplexity of each row's generated tokens given its prompt under the judge's full model."""
  model, params = judge.model, judge.params
  T = max(len(p) + len(o) for p, o in zip(prompts, outputs))
  if model not in _JIT:
    _JIT[model] = jax.jit(lambda p, x: model.apply({'params': p}, x).logits_BxTxV)
  fn = _JIT[model]
  nll, count = 0.0, 0
  for p, o in zip(prompts, outputs):
    if not o:
      continue
    seq = list(p) + list(o)
    inp = np.zeros((1, T), np.int32)
    inp[0, :len(seq)] = seq
    logp = jax.nn.log_softmax(np.asarray(fn(params, jnp.asarray(inp))[0], np.float64), -1)
    idx = np.arange(len(p) - 1, len(seq) - 1)
    nll += -float(np.sum(np.asarray(logp)[idx, np.asarray(o)]))
    count += len(o)
  return math.exp(nll / max(count, 1))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--workdir', default='runs/skip_tiny')
  ap.add_argument('--base_workdir', default='runs/tiny')
  ap.add_argument('--prompts', type=int, default=16)
  ap.add_argument('--prompt_chars', type=int, default=128)
  ap.add_argument('--new_tokens', type=int, default=64)
  ap.add_argument('--max_skips', default='1,2,3')
  ap.add_argument('--repeats', type=int, default=3)
  args = ap.parse_args()
  N = args.new_tokens
  runs = {}
  base = Workbench.load(args.base_workdir, runs=runs)
  tuned = Workbench.load(args.workdir, runs=runs)
  L = base.model.cfg.num_layers
  texts = [t for t in base.heldout_prompts(args.prompts, chars=args.prompt_chars + N)[0]]
  full = [base.tokenizer.encode_prompt(t) for t in texts]
  prompts = [row[:-N] for row in full]
  scheds = schedules([int(s) for s in args.max_skips.split(',')])
  rows_out, plot = [], {}
  for label, bench in (('AR run', base), ('SkipDecode fine-tune', tuned)):
    specs = [('ar', 'ar', 'AR', '—')]
    for sched, setting in scheds:
      specs.append((f'skipdecode:{setting}', 'SkipDecode (skip bottom)', sched, ''))
      specs.append((f'skipdecode:{setting}:skip_from=top', 'early exit (skip top)', sched, ''))
    specs.append(('layerskip', 'LayerSkip self-spec. (lossless)', f'exit {L // 2}', ''))
    decs = bench.decoders([s for s, *_ in specs], SamplingConfig())
    results = bench.run(decs, prompts, max_new_tokens=N, repeats=args.repeats)
    by_spec = dict(zip([s for s, *_ in specs], results.values()))
    ar_rows, ar_stats = by_spec['ar']
    for spec, method, sched, _ in specs:
      rows, stats = by_spec[spec]
      ppl, acc = teacher_forced(bench, full, N, spec if spec != 'layerskip' else 'ar')
      agree, prefix = harness.agreement(ar_rows, rows)
      judge = judge_perplexity(base, prompts, [r.tokens for r in rows])
      layers = (stats.extra['layer_forwards'] / stats.generated if 'layer_forwards' in
                stats.extra else '—')
      rows_out.append([label, method, sched, ppl, acc, agree, prefix, judge,
                       layers if spec != 'ar' else float(L),
                       stats.tokens_per_s, stats.tokens_per_s / ar_stats.tokens_per_s])
      print(rows_out[-1], flush=True)
      if spec not in ('ar', 'layerskip'):
        plot.setdefault((label, method, sched.split()[0]), []).append((layers, ppl))
  header = ['model', 'method', 'schedule', 'held-out ppl (teacher-forced)', 'held-out acc',
            'agreement with AR', 'common prefix (tokens)', 'judge ppl of output',
            'layers / token', 'tokens/s', 'vs AR']
  body = (f'{len(prompts)} held-out prompts of the corpus ({args.prompt_chars} characters), '
          f'{N} new tokens, greedy, batch {len(prompts)}; models: `{args.base_workdir}` (the AR '
          f'run, {L} layers) and `{args.workdir}` (its SkipDecode fine-tune). Lossy methods: '
          'SkipDecode and early exit do not reproduce AR. "held-out ppl" scores the true '
          'continuation of the held-out documents with the schedule applied (as decoding runs '
          'it); "judge ppl" scores the generated text under the AR run\'s full model (lower is '
          'not always better: repetitive text scores low). "layers / token" counts layer '
          'forwards per generated token (prefill counted as one forward of all layers; for '
          'AR it is the layer count; LayerSkip verifies every token in full, its drafting is '
          'extra). One run, one seed; tokens/s on a shared CPU where the forward of this tiny '
          'model is dominated by fixed per-call costs, so skipping layers buys less time than '
          'it saves layers.\n\n' + common.markdown_table(header, rows_out) + '\n')
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for (label, method, kind), pts in plot.items():
    pts.sort()
    ax.plot([p[0] for p in pts], [p[1] for p in pts],
            ('o' if 'bottom' in method else 's') + ('-' if kind == 'constant' else ':'),
            label=f'{method}, {kind}, {label}')
  ax.set_xlabel('layer forwards per generated token')
  ax.set_ylabel('held-out perplexity (teacher-forced)')
  ax.set_yscale('log')
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(f'{common.RESULTS_DIR}/skipdecode.png', dpi=120)
  body += '\n![held-out perplexity vs layers per token](skipdecode.png)\n'
  path = common.write_results('skipdecode', 'SkipDecode vs early exit: quality and speed', body)
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
