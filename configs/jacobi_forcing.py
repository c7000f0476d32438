"""Jacobi Forcing: fine-tune a trained AR run on its own Jacobi trajectories (the
`jacobi_forcing` objective) so that Jacobi decoding converges in fewer iterations.

  python train.py --config=configs/lm.py:tiny --workdir=runs/tiny                  # the base
  python train.py --config=configs/jacobi_forcing.py --workdir=runs/jf_tiny \
      --config.jf.base_workdir=runs/tiny
  python -m benchmarks.jacobi_forcing --base=runs/tiny --forced=runs/jf_tiny

The model section must equal the base's (the `tiny` preset by default; the argument
'SIZE[,test]' picks another preset, ',test' the unit-test settings). Each step collects the
current model's Jacobi trajectories (prompt of 32 corpus tokens, 2 blocks of 16) and trains
AR + consistency on them; about 5 minutes for 120 steps (batch 8) on 2 busy CPU cores.
Measured (one seed): Jacobi iterations per token on held-out prompts 0.93 -> 0.29 at n = 16,
bits per byte 2.05 -> 2.28, and greedy text far more repetitive (distinct 4-grams 0.76 ->
0.12): see docs/speculative.md#jacobi-forcing.
See training/objectives/jacobi_forcing.py.
"""

import ml_collections

from configs import common


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  parts = (arg or 'tiny').split(',')
  size = parts[0] or 'tiny'
  test = 'test' in parts[1:] or size == 'test'
  c = common.base_config()
  c.objective = 'jacobi_forcing'
  c.model = common.model_config('test' if size == 'test' else size)
  c.jf = ml_collections.ConfigDict(dict(
      base_workdir='runs/tiny', prompt_len=32, block=16, blocks=2, noise_window=16,
      context='noisy', consistency='soft', ar_weight=1.0, consistency_weight=1.0,
      corpus_weight=1.0, trajectories='current'))
  if test:
    c.data.seq_len, c.data.batch_size = 32, 8
    c.jf.update(prompt_len=8, block=4, blocks=2, noise_window=4)
    c.train.update(steps=6, learning_rate=3e-3, warmup_steps=1, log_every=2, eval_every=6,
                   eval_batches=1, checkpoint_every=6, progress_bar=False)
  else:
    c.data.seq_len, c.data.batch_size = 128, 8
    # lr 2e-4 gave fewer iterations per token and lower bits per byte than 5e-4 in the
    # one-seed runs of benchmarks/results/jacobi_forcing_cpu.md, but more repetitive greedy
    # text; jf.corpus_weight=4 keeps more of the bits per byte.
    c.train.update(steps=120, learning_rate=2e-4, min_lr_ratio=0.1, warmup_steps=20,
                   weight_decay=0.0, log_every=20, eval_every=60, eval_batches=4,
                   checkpoint_every=60)
  c.lock()
  return c
