"""Training throughput and model FLOPs utilisation of the jitted, sharded train step.

  python -m benchmarks.train_throughput --preset=base --batch=16 --seq_len=2048   # GPU goal
  python -m benchmarks.train_throughput --preset=tiny --batch=16 --seq_len=128 --dtype=float32

Runs the real train step (AdamW, clipping, donation) on random tokens over a mesh of all
devices (data-parallel by default). FLOPs per token follow PaLM (Chowdhery et al. 2022,
appendix B): 6 * N_matmul + 12 * L * H * Dh * T, where N_matmul counts every matmul weight
(the output head included, the embedding lookup not). MFU = FLOPs/s / device bf16 peak.
Writes benchmarks/results/train_throughput.md.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from benchmarks import common
from configs import common as presets
from configs import lm
from models import ModelConfig, Transformer, sharding
from training import objectives, optimizer, step, train_state


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  n_matmul = cfg.num_params() - cfg.vocab_size * cfg.d_model * (0 if cfg.tie_embeddings else 1)
  n_matmul -= cfg.num_layers * 2 * cfg.d_model + cfg.d_model  # norm scales are no matmuls
  attn = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
  return 6 * n_matmul + attn


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--preset', default='base', choices=sorted(presets.PRESETS))
  ap.add_argument('--dtype', default='bfloat16', choices=['float32', 'bfloat16'])
  ap.add_argument('--batch', type=int, default=16)
  ap.add_argument('--seq_len', type=int, default=2048)
  ap.add_argument('--steps', type=int, default=10)
  ap.add_argument('--mesh', default='data=-1', help='e.g. data=-1 or fsdp=8')
  ap.add_argument('--remat', default='none', choices=['none', 'block', 'dots'],
                  help='model.remat (rematerialisation; recomputed FLOPs are not counted)')
  args = ap.parse_args()

  d = dict(presets.PRESETS[args.preset])
  d['max_seq_len'] = max(d['max_seq_len'], args.seq_len)
  vocab = 272 if args.preset in ('test', 'tiny') else 32768
  cfg = ModelConfig(vocab_size=vocab, dtype=args.dtype, remat=args.remat, **d)
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
  batches = [jax.device_put(rng.integers(0, vocab, (args.batch, args.seq_len + 1),
                                         dtype=np.int32), batch_sharding['tokens'])
             for _ in range(2)]
  holder = {'state': state, 'i': 0}

  def one_step():
    holder['state'], m = fn(holder['state'], {'tokens': batches[holder['i'] % 2]})
    holder['i'] += 1
    jax.block_until_ready(m['loss'])

  t = common.median_time(one_step, warmup=2, repeats=args.steps)
  tokens_s = args.batch * args.seq_len / t
  flops = flops_per_token(cfg, args.seq_len) * tokens_s
  peak, _ = common.device_peaks()
  mfu = flops / (peak * jax.device_count()) if peak else 'n/a'
  row = [args.preset, f'{cfg.num_params() / 1e6:.1f}M', args.dtype, args.batch, args.seq_len,
         dict(mesh.shape), args.remat, t * 1e3, tokens_s, flops / 1e12, mfu]
  table = common.markdown_table(['preset', 'params', 'dtype', 'batch', 'seq', 'mesh', 'remat',
                                 'step ms', 'tokens/s', 'TFLOP/s', 'MFU'], [row])
  path = common.write_results(f'train_throughput_{args.preset}', 'Training throughput',
                              table + '\n')
  print(table)
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
