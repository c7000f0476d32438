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
  if size == 'test':
    c.data.seq_len, c.data.batch_size = 32, 4
    c.train.update(steps=20, warmup_steps=2, log_every=5, eval_every=10, eval_batches=2,
                   checkpoint_every=10, progress_bar=False)
  elif size == 'tiny':
    c.data.seq_len, c.data.batch_size = 128, 16
    c.train.update(steps=600, learning_rate=3e-3, warmup_steps=60, log_every=50,
                   eval_every=200, eval_batches=8, checkpoint_every=200)
  elif size == 'small':
    c.tokenizer.update(kind='bpe', vocab_size=32768)
    c.model.dtype = 'bfloat16'
    c.data.seq_len, c.data.batch_size = 1024, 64
    c.train.update(steps=20_000, learning_rate=1e-3, warmup_steps=1000, log_every=100,
                   eval_every=1000, eval_batches=16, checkpoint_every=1000)
  elif size == 'base':
    c.tokenizer.update(kind='bpe', vocab_size=32768)
    c.model.dtype = 'bfloat16'
    c.data.seq_len, c.data.batch_size = 2048, 128
    c.train.update(steps=50_000, learning_rate=5e-4, warmup_steps=2000, log_every=100,
                   eval_every=2000, eval_batches=16, checkpoint_every=2000)
  c.lock()
  return c
