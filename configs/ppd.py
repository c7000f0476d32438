"""PPD (Parallel Prompt Decoding, arXiv 2405.18628): K trained prompt tokens on a frozen target.

  python train.py --config=configs/lm.py:tiny --workdir=runs/spec/target        # the target
  python train.py --config=configs/ppd.py --workdir=runs/spec/ppd \
      --config.spec.target_workdir=runs/spec/target
  python sample.py --workdir=runs/spec/ppd --decoder=ar,ppd --heldout_prompts=8

The run starts from the target in `spec.target_workdir` and trains only the K = `spec.heads`
prompt-token embeddings (params['ppd'], K x d_model numbers) by self-distillation from the
base: loss = sum_i decay^i KL(p_base || q_i) / K with decay 0.8 (training/objectives/ppd.py).
Learning rate 1e-2 as in the paper. Every token of a row gets K prompt tokens, so a step runs
the base over rows of seq_len x (1 + K) tokens: 300 steps of batch 16 x 64 took 18 minutes
for the `tiny` target on 2 CPU cores shared with other jobs (2-3.5 s per step). The run's workdir then holds target +
prompt tokens, which is what sample.py (decoder `ppd`) needs.

The argument is optionally 'K' (prompt tokens, default 3), then ',test' (the `test` model
preset, 20 steps: unit tests) or ',SIZE' for another target preset, e.g. 'ppd.py:3,test'.
"""

import ml_collections

from configs import common


def get_config(arg: str = '3') -> ml_collections.ConfigDict:
  parts = [p for p in (arg or '3').split(',') if p]
  k = 3
  if parts and parts[0].isdigit():
    k = int(parts.pop(0))
  size = parts[0] if parts else 'tiny'
  c = common.base_config()
  c.objective = 'ppd_prompts'
  c.model = common.model_config(size)
  if size in ('small', 'base'):  # as configs/lm.py trains them (pass the target's tokenizer)
    c.model.dtype = 'bfloat16'
  c.spec = ml_collections.ConfigDict(dict(target_workdir='runs/spec/target', heads=k,
                                          joint=False, decay=0.8))
  if size == 'test':
    c.data.seq_len, c.data.batch_size = 16, 8
    c.train.update(steps=20, learning_rate=1e-2, warmup_steps=2, log_every=5, eval_every=10,
                   eval_batches=2, checkpoint_every=10, progress_bar=False, weight_decay=0.0)
  else:
    c.data.seq_len, c.data.batch_size = 64, 16
    c.train.update(steps=300, learning_rate=1e-2, warmup_steps=30, log_every=25,
                   eval_every=100, eval_batches=8, checkpoint_every=100, weight_decay=0.0)
  c.lock()
  return c
