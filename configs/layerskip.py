"""LayerSkip fine-tuning: an AR run continued with the early-exit loss at every layer.

  python train.py --config=configs/lm.py:mem --workdir=runs/spec_mem/target    # the AR run
  python train.py --config=configs/layerskip.py:mem --workdir=runs/spec_mem/layerskip \
      --config.exit.init_from=runs/spec_mem/target    # 150 steps: ~10 min on 2 CPU cores
  python sample.py --workdir=runs/spec_mem/layerskip --heldout_prompts=4 \
      --decoder=ar,layerskip:exit_layer=2,layerskip:exit_layer=2:adaptive=1

Starts from `exit.init_from` (the AR run; same model preset) and trains with the
`early_exit` objective (`training/objectives/early_exit.py`): next-token loss at the final
head plus `exit.scale` times a depth-weighted mean of the same loss read through the final
norm and head after every layer in `exit.layers` (() = all). The `layerskip` decoder is
lossless with respect to the fine-tuned model, whose own quality is the run's `full_loss`.
The argument is a size preset (test, tiny, mem).
"""

import ml_collections

from configs import common


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  size = arg or 'tiny'
  c = common.base_config()
  c.objective = 'early_exit'
  c.model = common.model_config(size)
  common.lm_run_settings(c, size)
  c.exit = ml_collections.ConfigDict(dict(layers=(), scale=1.0, init_from=''))
  if size != 'test':  # a short fine-tune from the AR run
    c.exit.init_from = 'runs/spec_mem/target' if size == 'mem' else 'runs/tiny'
    c.data.batch_size = 8
    c.train.update(steps=150, learning_rate=3e-4, warmup_steps=15, log_every=25,
                   eval_every=75, eval_batches=8, checkpoint_every=75)
  c.lock()
  return c
