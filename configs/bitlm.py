"""BitLM: a causal backbone plus a bitwise diffusion head over blocks of K tokens, from scratch.

  python train.py --config=configs/bitlm.py:tiny --workdir=runs/bitlm_tiny     # 21 min*
  python sample.py --workdir=runs/bitlm_tiny --heldout_prompts=4 --decoder=bitlm
  python -m benchmarks.bitlm --bitlm=runs/bitlm_tiny --ar=runs/tiny
  python train.py --config=configs/bitlm.py:tiny,head=analog --workdir=runs/bitlm_analog_tiny
  python train.py --config=configs/bitlm.py:tiny,fold --workdir=runs/bitlm_fold_tiny

* 600 steps took 21 minutes on 2 CPU cores shared with three other training jobs (about 1.7 s
a step; configs/lm.py:tiny takes about 0.45 s a step on the same cores when they are quiet).
On the same 2 cores idle, 600 steps take about 2.5 minutes with either head, and under a minute
with `fold` (its backbone reads one position per block of K tokens).

The argument is a size preset (test, tiny), then optionally ',K' for the block size (default
4) and ',head=analog' for the paper's continuous analog-bit head instead of the default
absorbing (masked) bit head (models/bitlm.py), and ',fold' for one backbone position (and KV
entry) per block instead of per token, e.g. `tiny,8,head=analog` or `tiny,fold`.
The backbone is `configs/lm.py`'s model of that size, trained on the same data for the same
steps (600 steps of 16 x 128 tokens for tiny), so the AR run of that config is the equal-size
baseline. The head (training/objectives/bitlm.py) adds about 0.07M parameters at tiny and is trained
on 32 random block starts per row (of 125) to keep a step near AR's cost.
"""

import ml_collections

from configs import common

HEADS = {  # size -> (width, layers, heads, mlp)
    'test': (32, 1, 2, 64),
    'tiny': (64, 2, 4, 128),
}


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  parts = (arg or 'tiny').split(',')
  size, block, head, fold = parts[0], 4, 'masked', False
  for part in parts[1:]:
    if part.startswith('head='):
      head = part[len('head='):]
      if head not in ('masked', 'analog'):
        raise ValueError(f"configs/bitlm.py: head must be 'masked' or 'analog', got {head!r}.")
    elif part.isdigit():
      block = int(part)
    elif part == 'fold':
      fold = True
    else:
      raise ValueError(f'configs/bitlm.py: options are a block size K, head=masked|analog or '
                       f'fold, got {part!r}.')
  if size not in HEADS:
    raise ValueError(f'configs/bitlm.py: size must be one of {sorted(HEADS)}, got {size!r}.')
  width, layers, heads, mlp = HEADS[size]
  c = common.base_config()
  c.objective = 'bitlm'
  c.model = common.model_config(size)
  common.lm_run_settings(c, size)
  c.bitlm = ml_collections.ConfigDict(dict(head=head, block=block, head_width=width,
                                           head_layers=layers, head_heads=heads, head_mlp=mlp,
                                           eps=1e-3, fold=fold,
                                           starts=0 if size == 'test' else 32))
  if size == 'test':
    c.data.batch_size = 8  # a multiple of the test suite's 8 devices
  c.lock()
  return c
