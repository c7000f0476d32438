"""SkipDecode fine-tuning: an AR run continued under random layer-skip profiles.

  python train.py --config=configs/lm.py:tiny --workdir=runs/tiny            # the AR run
  python train.py --config=configs/skipdecode.py:tiny --workdir=runs/skip_tiny \
      --config.skip.init_from=runs/tiny    # 100 steps: ~4 min on 2 cores shared with other jobs
  python sample.py --workdir=runs/skip_tiny --heldout_prompts=4 \
      --decoder=ar,skipdecode:max_skip=2,skipdecode:max_skip=2:skip_from=top

Starts from `skip.init_from` (the AR run; same model preset) and trains with the `skipdecode`
objective (`training/objectives/skipdecode.py`): next-token loss where each row skips a random,
non-decreasing number of its lowest layers along its positions (up to `skip.max_skip`, -1 =
all but the last layer), with `skip.full_fraction` of the rows run in full. Eval reports the
full model's loss beside the skipping one. The argument is a size preset (test, tiny).
"""

import ml_collections

from configs import common


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  size = arg or 'tiny'
  c = common.base_config()
  c.objective = 'skipdecode'
  c.model = common.model_config(size)
  common.lm_run_settings(c, size)
  c.skip = ml_collections.ConfigDict(dict(max_skip=-1, full_fraction=0.25,
                                          init_from='' if size == 'test' else 'runs/tiny'))
  if size != 'test':  # a short fine-tune from the AR run
    c.train.update(steps=100, learning_rate=1e-3, warmup_steps=10, log_every=25,
                   eval_every=50, eval_batches=8, checkpoint_every=50)
  c.lock()
  return c
