"""HAMburger: a trained AR run fine-tuned with a compositional embedder and a micro-step decoder
(models/hamburger.py), several tokens per base forward and per KV entry.

  python train.py --config=configs/lm.py:tiny --workdir=runs/tiny               # the base
  python train.py --config=configs/hamburger.py:tiny --workdir=runs/ham_tiny    # ~11 min on the loaded 2-core CPU
  python sample.py --workdir=runs/ham_tiny --heldout_prompts=4 --decoder=ar,hamburger

The run starts from the base in `hamburger.target_workdir` (default runs/tiny; same model
preset) and fine-tunes all of it (`training/objectives/hamburger.py`): the base, the
embedder's per-offset maps and the micro decoder (a copy of the base's last layer plus a stop
head). Steps hold 1 .. k tokens: a token joins the step before it when the model gives it
probability >= tau. The argument is a size preset (test, tiny), optionally ',k' (default 4)
and ',tau' (default 0.5). `--config.hamburger.embedder=cross_attention` trains the paper's
cross-attention embedder instead of the per-offset maps.
"""

import ml_collections

from configs import common


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  parts = (arg or 'tiny').split(',')
  size = parts[0]
  k = int(parts[1]) if len(parts) > 1 else 4
  tau = float(parts[2]) if len(parts) > 2 else 0.5
  c = common.base_config()
  c.objective = 'hamburger'
  c.model = common.model_config(size)
  common.lm_run_settings(c, size)
  c.hamburger = ml_collections.ConfigDict(dict(
      target_workdir='' if size == 'test' else 'runs/tiny', k=k, tau=tau, stop_weight=0.5,
      # the compositional embedder: 'linear' (per-offset maps) or 'cross_attention' (the
      # paper's: mean-embedding query over the step's tokens + in-step positions)
      embedder='linear'))
  if size == 'test':
    c.data.batch_size = 8  # a multiple of the test suite's 8 devices
  else:
    # Short: a step costs ~3x an AR step (a plain pass for the segmentation, the compressed
    # pass and the micro decoder over every step): 11 min on a loaded 2-core CPU.
    c.train.update(steps=120, learning_rate=1e-3, warmup_steps=12, log_every=20,
                   eval_every=60, eval_batches=4, checkpoint_every=60, weight_decay=0.0)
  c.lock()
  return c
