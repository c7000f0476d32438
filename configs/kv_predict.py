"""KV Prediction: an auxiliary model and a KV predictor trained beside a frozen AR run.

  python train.py --config=configs/lm.py:tiny --workdir=runs/tiny              # the base
  python train.py --config=configs/kv_predict.py:tiny --workdir=runs/kvp_tiny  # ~10 min, 2 cores
  python sample.py --workdir=runs/kvp_tiny --heldout_prompts=4 --decoder=ar,kv_predict

The run starts from the base in `kvp.target_workdir` (default runs/tiny; same model preset),
freezes it and trains params['kv_predict'] (`training/objectives/kv_predict.py`): the
auxiliary model (copies of the base's first `kvp.aux_layers` layers) and the per-layer
key/value predictor. Its workdir then holds base + predictor, which `kv_predict` decodes from.
The argument is a size preset (test, tiny), optionally ',A' for A auxiliary layers (default 1).
"""

import ml_collections

from configs import common


def get_config(arg: str = 'tiny') -> ml_collections.ConfigDict:
  parts = (arg or 'tiny').split(',')
  size = parts[0]
  aux_layers = int(parts[1]) if len(parts) > 1 else 1
  c = common.base_config()
  c.objective = 'kv_predict'
  c.model = common.model_config(size)
  common.lm_run_settings(c, size)
  c.kvp = ml_collections.ConfigDict(dict(
      target_workdir='' if size == 'test' else 'runs/tiny', aux_layers=aux_layers,
      prefix_frac=0.5, consistency_weight=1.0))
  if size == 'test':
    c.data.batch_size = 8  # a multiple of the test suite's 8 devices
  else:
    c.train.update(steps=300, learning_rate=1e-3, warmup_steps=30, log_every=25,
                   eval_every=100, eval_batches=8, checkpoint_every=100, weight_decay=0.0)
  c.lock()
  return c
