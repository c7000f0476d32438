"""S2D's nested draft: one 4-layer draft trained with Sorted Fine-Tuning (mean cross-entropy
over the exits after layers 1, 2 and 4, one shared norm and head) on the code corpus; each
sub-model is a draft for any target with the byte tokenizer.

  python train.py --config=configs/s2d.py --workdir=runs/s2d/draft          # ~5 min, 2 CPUs
  python sample.py --workdir=runs/tiny --decoder=ar,s2d \
      --decoder_config.draft_workdir=runs/s2d/draft --decoder_config.exit_layer=2
  python -m benchmarks.spec_chimera_s2d     # picks the sub-model per target, measures tau

The draft is the `test` preset (width 64) with 4 layers. Arguments: '' (this draft) or
'test' (2 layers, exits 1 and 2, 20 steps: unit tests). Override the exits with
--config.s2d.exits=1,2,4.
"""

import ml_collections

from configs import common


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  size = arg or 'draft'
  if size not in ('draft', 'test'):
    raise ValueError(f"configs/s2d.py takes '' or 'test', got {arg!r}.")
  c = common.base_config()
  c.objective = 's2d_soft'
  if size == 'test':
    c.model = common.model_config('test', max_seq_len=1024)
    c.s2d = ml_collections.ConfigDict(dict(exits='1,2'))
    c.data.seq_len, c.data.batch_size = 32, 8
    c.train.update(steps=20, warmup_steps=2, log_every=5, eval_every=10, eval_batches=2,
                   checkpoint_every=10, progress_bar=False)
  else:
    c.model = common.model_config('test', num_layers=4, max_seq_len=1024)
    c.s2d = ml_collections.ConfigDict(dict(exits='1,2,4'))
    c.data.seq_len, c.data.batch_size = 128, 16
    c.train.update(steps=600, learning_rate=3e-3, warmup_steps=60, log_every=50,
                   eval_every=200, eval_batches=8, checkpoint_every=200)
  c.lock()
  return c
