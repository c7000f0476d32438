"""KV Prediction: time to first token against quality, per auxiliary-model budget.

  python train.py --config=configs/kv_predict.py:tiny,A --workdir=runs/kvp_tiny_aA   # A = 0, 1, 2
  python -m benchmarks.kv_predict --runs=runs/kvp_tiny_a0,runs/kvp_tiny_a1,runs/kvp_tiny_a2

Each run holds the frozen base (`runs/tiny`) and a predictor trained with A auxiliary layers
(`models/kv_predict.py`; lossy). Measured, beside the base's own exact cache in the same run:

  teacher-forced   held-out documents of `--seq_tokens` tokens: the first `--prompt_tokens`
                   are the prompt (its cache predicted, but for its last token, which the base
                   runs), the rest are scored: perplexity and next-token accuracy, plus the
                   top-1 agreement with the exact-cache base.
  generation       greedy from held-out prompts: agreement of `kv_predict` with `ar`.
  time to first    one prompt of `--ttft_tokens` tokens: the base's prefill against the
  token            auxiliary model + predictor + one base step, each compiled once and timed
                   `--repeats` times interleaved (the minimum is reported), next to the ratio
                   the multiply-adds allow (the ideal).

Writes benchmarks/results/kv_predict.md (+ .png). One run, one seed, greedy; times on a shared
2-core CPU.
"""

from __future__ import annotations

import argparse
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks import harness
from decoding import Models, SamplingConfig
from decoding import ar as ar_lib
from decoding import kv_predict as kvp_decoding
from models import Cache
from models import kv_predict as kvp_lib
from workbench import Workbench


def layer_macs(cfg) -> int:
  """Multiply-adds per token of one layer's projections and MLP (attention scores left out:
  they are the same per layer in both paths)."""
  D, H, K, Dh, F = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  return D * (H + 2 * K) * Dh + H * Dh * D + 3 * D * F


def ideal_ratio(cfg, aux_layers: int, prompt: int) -> float:
  """Multiply-adds of the predicted prefill over the base's, per the same prompt: A auxiliary
  layers + the predictor (two D x K·Dh maps per base layer) over P - 1 tokens, plus one base
  step, against L layers over P tokens."""
  L = cfg.num_layers
  predictor = 2 * cfg.d_model * cfg.num_kv_heads * cfg.head_dim * L
  ours = (prompt - 1) * (aux_layers * layer_macs(cfg) + predictor) + L * layer_macs(cfg)
  return ours / (prompt * L * layer_macs(cfg))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _teacher_forced(model, params, kvp, tokens_BxT, prompt):
  """(nll, accuracy, top-1 agreement with the exact prefix) of tokens[prompt:] with the prefix
  cache predicted (kvp) and exact."""
  B, T = tokens_BxT.shape
  pos = jnp.broadcast_to(jnp.arange(prompt - 1), (B, prompt - 1))
  prefix = tokens_BxT[:, :prompt - 1]

  def score(kv):
    cache = kvp_lib.write_cache(Cache.init(model.cfg, B, T), kv, pos,
                                jnp.full((B,), prompt - 1, jnp.int32))
    rest = jnp.broadcast_to(jnp.arange(prompt - 1, T - 1), (B, T - prompt))
    return model.apply({'params': params}, tokens_BxT[:, prompt - 1:T - 1], rest,
                       cache=cache).logits_BxTxV

  pred = score(kvp_lib.predict_kv(model.cfg, params, kvp, prefix, pos))
  exact = score(kvp_lib.exact_kv(model, params, prefix, pos))
  targets = tokens_BxT[:, prompt:]
  out = []
  for logits in (pred, exact):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    out.append((-jnp.mean(jnp.take_along_axis(logp, targets[..., None], -1)),
                jnp.mean(jnp.argmax(logits, -1) == targets)))
  agree = jnp.mean(jnp.argmax(pred, -1) == jnp.argmax(exact, -1))
  return out[0], out[1], agree


def time_to_first_token(bench, prompt_tokens: int, repeats: int) -> tuple[float, float]:
  """(seconds of the base's prefill, seconds of the predicted prefill): minimum of `repeats`
  interleaved calls, both compiled first."""
  models = Models(bench.model)
  params = {'target': bench.params, **bench.extras}
  prompt = jnp.asarray(np.random.RandomState(0).randint(3, 200, (1, prompt_tokens)), jnp.int32)
  lens = jnp.asarray([prompt_tokens], jnp.int32)
  size = prompt_tokens + 8
  fns = [jax.jit(lambda p, x, n, d=d: d.prefill(models, p, x, n, size))
         for d in (ar_lib.ARDecoder(), kvp_decoding.KVPredictDecoder())]
  for f in fns:
    jax.block_until_ready(f(params, prompt, lens))
  best = [math.inf, math.inf]
  for _ in range(repeats):
    for i, f in enumerate(fns):
      t0 = time.perf_counter()
      jax.block_until_ready(f(params, prompt, lens))
      best[i] = min(best[i], time.perf_counter() - t0)
  return best[0], best[1]


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--runs', default='runs/kvp_tiny_a0,runs/kvp_tiny_a1,runs/kvp_tiny_a2')
  ap.add_argument('--docs', type=int, default=16)
  ap.add_argument('--seq_tokens', type=int, default=128)
  ap.add_argument('--prompt_tokens', type=int, default=64)
  ap.add_argument('--gen_prompt_chars', type=int, default=64)
  ap.add_argument('--new_tokens', type=int, default=48)
  ap.add_argument('--ttft_tokens', type=int, default=512)
  ap.add_argument('--repeats', type=int, default=20)
  args = ap.parse_args()
  rows_out, plot = [], []
  base_row = None
  for run in args.runs.split(','):
    bench = Workbench.load(run)
    if kvp_lib.KV_PREDICT not in bench.extras:
      raise ValueError(f'{run} holds no KV predictor: train it with configs/kv_predict.py.')
    kvp = bench.extras[kvp_lib.KV_PREDICT]
    A = kvp_lib.num_aux_layers(kvp)
    cfg = bench.model.cfg
    T = args.seq_tokens
    texts = bench.heldout_prompts(args.docs, chars=4 * T)[0]
    seqs = [s[:T] for s in (bench.tokenizer.encode_prompt(t) for t in texts) if len(s) >= T]
    (nll, acc), (nll_x, acc_x), agree_tf = _teacher_forced(
        bench.model, bench.params, kvp, jnp.asarray(seqs, jnp.int32), args.prompt_tokens)
    _, prompts = bench.heldout_prompts(args.docs, chars=args.gen_prompt_chars)
    results = bench.run(bench.decoders(['ar', 'kv_predict'], SamplingConfig()), prompts,
                        max_new_tokens=args.new_tokens)
    (ref_rows, _), (rows, _) = results.values()
    agree, prefix = harness.agreement(ref_rows, rows)
    t_base, t_ours = time_to_first_token(bench, args.ttft_tokens, args.repeats)
    ideal = ideal_ratio(cfg, A, args.ttft_tokens)
    if base_row is None:
      base_row = ['exact cache (base prefill)', '-', math.exp(float(nll_x)), float(acc_x), 1.0,
                  1.0, '-', t_base * 1e3, 1.0, 1.0]
      rows_out.append(base_row)
    rows_out.append([f'kv_predict, A = {A}', f'{A} of {cfg.num_layers}',
                     math.exp(float(nll)), float(acc), float(agree_tf), agree, prefix,
                     t_ours * 1e3, t_ours / t_base, ideal])
    plot.append((t_ours / t_base, math.exp(float(nll)), A))
    print(rows_out[-1], flush=True)
  header = ['prompt cache', 'aux layers', 'held-out ppl (teacher-forced)', 'held-out acc',
            'top-1 agreement with exact cache', 'greedy agreement with `ar`',
            'common prefix (tokens)', f'time to first token, {args.ttft_tokens}-token prompt '
            '(ms)', 'vs base prefill', 'ideal (multiply-adds)']
  body = (f'Base `runs/tiny` ({cfg.num_layers} layers, d_model {cfg.d_model}, trained on '
          f'128-token windows), frozen; each predictor trained 300 steps '
          '(`configs/kv_predict.py:tiny,A`). Teacher-forced: '
          f'{len(seqs)} held-out documents of {args.seq_tokens} tokens, the first '
          f'{args.prompt_tokens} the prompt, the other {args.seq_tokens - args.prompt_tokens} '
          f'scored. Generation: {len(prompts)} held-out prompts of {args.gen_prompt_chars} '
          f'characters, {args.new_tokens} new tokens, greedy. Time to first token: batch 1, '
          f'minimum of {args.repeats} interleaved calls each, on a shared 2-core CPU (other '
          'jobs running): read the ratio, not the milliseconds. The ideal counts the '
          'projections and MLPs only. Lossy: the base attends to predicted keys and values of '
          'the prompt. One run, one seed.\n\n' + common.markdown_table(header, rows_out) + '\n')
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot([p[0] for p in plot], [p[1] for p in plot], 'o-', label='kv_predict')
  for x, y, A in plot:
    ax.annotate(f'A={A}', (x, y), textcoords='offset points', xytext=(4, 4))
  ax.plot([1.0], [base_row[2]], 'k*', ms=10, label='exact cache')
  ax.set_xlabel('time to first token / base prefill')
  ax.set_ylabel('held-out perplexity (teacher-forced)')
  ax.legend()
  fig.tight_layout()
  fig.savefig(f'{common.RESULTS_DIR}/kv_predict.png', dpi=120)
  body += '\n![quality vs time to first token](kv_predict.png)\n'
  path = common.write_results('kv_predict', 'KV Prediction: time to first token against quality',
                              body)
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
