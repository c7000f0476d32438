"""Training throughput and model FLOPs utilisation of the jitted, sharded train step.

  python -m benchmarks.train_throughput --preset=base --batch=16 --seq_len=2048   # GPU goal
  python -m benchmarks.train_throughput --preset=tiny --batch=16 --seq_len=128 --dtype=float32
  python -m benchmarks.train_throughput --preset=base --remat=dots,none --batch=16,8 \
      --attention_impl=auto,mosaic --budget_s=200          # a sweep (issue 16 section 3)

`--remat`, `--batch` and `--attention_impl` take comma lists: one run measures every
combination in that nesting order (remat outermost, attention implementation innermost, so
the implementations of one setting sit side by side) until `--budget_s` is spent, each in
its own train state; a setting that fails (out of memory, a kernel that cannot run) is a
row with its error. The file is rewritten after each setting and names the best MFU.

Runs the real train step (AdamW, clipping, donation) on random tokens over a mesh of all
devices (data-parallel by default). FLOPs per token follow PaLM (Chowdhery et al. 2022,
appendix B): 6 * N_matmul + 12 * L * H * Dh * T, where N_matmul counts every matmul weight
(the output head included, the embedding lookup not). MFU = FLOPs/s / device bf16 peak.
Writes benchmarks/results/train_throughput.md.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from benchmarks import common
from benchmarks.kernel_checks import error_text
from configs import common as presets
from configs import lm
from models import ModelConfig, Transformer, sharding
from training import objectives, optimizer, step, train_state


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  n_matmul = cfg.num_params() - cfg.vocab_size * cfg.d_model * (0 if cfg.tie_embeddings else 1)
  n_matmul -= cfg.num_layers * 2 * cfg.d_model + cfg.d_model  # norm scales are no matmuls
  attn = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
  return 6 * n_matmul + attn


def _setting(args, remat: str, batch: int, attention_impl: str) -> list:
  """One row: the real train step of this setting, timed."""
  d = dict(presets.PRESETS[args.preset])
  d['max_seq_len'] = max(d['max_seq_len'], args.seq_len)
  vocab = 272 if args.preset in ('test', 'tiny') else 32768
  cfg = ModelConfig(vocab_size=vocab, dtype=args.dtype, remat=remat,
                    attention_impl=attention_impl, **d)
  model = Transformer(cfg)
  train_cfg = lm.get_config(args.preset).train
  objective = objectives.make_objective('ar', model, None)
  tx = optimizer.make_optimizer(train_cfg)
  mesh = sharding.make_mesh({k: int(v) for k, v in
                             (p.split('=') for p in args.mesh.split(','))})
  rules = sharding.DEFAULT_RULES
  shardings = train_state.state_shardings(model, objective, tx, mesh, rules)
  state = train_state.create_train_state(model, objective, tx, jax.random.key(0), shardings)
  batch_sharding = {'tokens': sharding.batch_sharding(mesh, 2, rules)}
  fn = step.jit_train_step(objective.loss_fn, tx, grad_accum=1, seed=0,
                           state_shardings=shardings)
  rng = np.random.default_rng(0)
  batches = [jax.device_put(rng.integers(0, vocab, (batch, args.seq_len + 1),
                                         dtype=np.int32), batch_sharding['tokens'])
             for _ in range(2)]
  holder = {'state': state, 'i': 0}

  def one_step():
    holder['state'], m = fn(holder['state'], {'tokens': batches[holder['i'] % 2]})
    holder['i'] += 1
    jax.block_until_ready(m['loss'])

  t = common.median_time(one_step, warmup=2, repeats=args.steps)
  tokens_s = batch * args.seq_len / t
  flops = flops_per_token(cfg, args.seq_len) * tokens_s
  peak, _ = common.device_peaks()
  mfu = flops / (peak * jax.device_count()) if peak else 'n/a'
  return [args.preset, f'{cfg.num_params() / 1e6:.1f}M', args.dtype, batch, args.seq_len,
          dict(mesh.shape), remat, attention_impl, t * 1e3, tokens_s, flops / 1e12, mfu]


HEADER = ['preset', 'params', 'dtype', 'batch', 'seq', 'mesh', 'remat', 'attention', 'step ms',
          'tokens/s', 'TFLOP/s', 'MFU']
GOAL_MFU = 0.40  # issue 16 section 3: `base` on one H200, bf16


def settings(remats: str, batches: str, impls: str) -> list[tuple[str, int, str]]:
  """(remat, batch, attention_impl) in the sweep's order: remat outermost, implementation
  innermost."""
  return [(r, int(b), a) for r in remats.split(',') for b in batches.split(',')
          for a in impls.split(',')]


def summary(rows: list[list], not_reached: list[tuple[str, int, str]]) -> str:
  """The table, the best MFU against the goal, and the settings the budget left out."""
  mfu = HEADER.index('MFU')
  done = [r for r in rows if isinstance(r[mfu], float)]
  lines = [common.markdown_table(HEADER, rows)]
  if done:
    best = max(done, key=lambda r: r[mfu])
    lines.append(f'Best: remat {best[HEADER.index("remat")]}, batch {best[HEADER.index("batch")]},'
                 f' attention {best[HEADER.index("attention")]}: MFU {best[mfu]:.4g} (goal '
                 f'{GOAL_MFU:g} on one H200 in bf16: '
                 f'{"met" if best[mfu] >= GOAL_MFU else "not met"}).')
  if not_reached:
    lines.append('Not reached within the budget: ' + '; '.join(
        f'remat {r}, batch {b}, attention {a}' for r, b, a in not_reached) + '.')
  return '\n\n'.join(lines) + '\n'


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--preset', default='base', choices=sorted(presets.PRESETS))
  ap.add_argument('--dtype', default='bfloat16', choices=['float32', 'bfloat16'])
  ap.add_argument('--batch', default='16', help='comma list of batch sizes')
  ap.add_argument('--seq_len', type=int, default=2048)
  ap.add_argument('--steps', type=int, default=10)
  ap.add_argument('--mesh', default='data=-1', help='e.g. data=-1 or fsdp=8')
  ap.add_argument('--remat', default='none',
                  help='comma list of model.remat values (none, block, dots; recomputed FLOPs '
                       'are not counted)')
  ap.add_argument('--attention_impl', default='auto',
                  help="comma list of ModelConfig.attention_impl values, e.g. 'auto,mosaic'")
  ap.add_argument('--budget_s', type=float, default=0.0,
                  help='start no setting after this many seconds (0: no limit)')
  ap.add_argument('--out', default='', help='suffix of the results file name')
  args = ap.parse_args(argv)
  todo = settings(args.remat, args.batch, args.attention_impl)
  for remat, _, _ in todo:
    if remat not in ('none', 'block', 'dots'):
      raise SystemExit(f'Unknown remat {remat!r}; choose none, block or dots.')
  name = f'train_throughput_{args.preset}' + (f'_{args.out}' if args.out else '')
  start, rows, path = time.monotonic(), [], ''
  for i, (remat, batch, impl) in enumerate(todo):
    if args.budget_s and time.monotonic() - start >= args.budget_s:
      path = common.write_results(name, 'Training throughput', summary(rows, todo[i:]))
      break
    try:
      rows.append(_setting(args, remat, batch, impl))
    except Exception as e:  # pylint: disable=broad-except
      rows.append([args.preset, '', args.dtype, batch, args.seq_len, '', remat, impl,
                   error_text(e, 150).replace('|', '/'), '', '', ''])
    print(common.markdown_table(HEADER, rows[-1:]), flush=True)
    path = common.write_results(name, 'Training throughput', summary(rows, []))
  print(f'wrote {path}')
  return path


if __name__ == '__main__':
  main()
