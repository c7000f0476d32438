"""Autoregressive LM on the embedded code corpus (Python standard library source).

  python train.py --config=configs/lm.py:tiny --workdir=runs/tiny      # ~3 min, 2 CPU cores
  python train.py --config=configs/lm.py:small --workdir=runs/small    # 1 GPU, BPE 32k
  python train.py --config=configs/lm.py:base --workdir=runs/base      # 1B, GPU/TPU host

The argument is a size preset (test, tiny, small, base); see configs/common.py.
"""

import ml_collections

from configs import common


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  size = arg or 'tiny'
  c = common.base_config()
  c.model = common.model_config(size)
  common.lm_run_settings(c, size)
  c.lock()
  return c
