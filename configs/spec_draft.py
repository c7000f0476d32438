"""A small draft model distilled from a trained target (the `draft_distill` objective).

  python train.py --config=configs/lm.py:tiny --workdir=runs/spec/target        # the target
  python train.py --config=configs/spec_draft.py --workdir=runs/spec/draft
  python train.py --config=configs/spec_draft.py:generated --workdir=runs/spec/draft_gen
  python sample.py --workdir=runs/spec/target --decoder=ar,speculative \
      --decoder_config.draft_workdir=runs/spec/draft --heldout_prompts=8

The draft is the `test` preset (2 layers, width 64: ~8x fewer FLOPs than `tiny`) with the
target's tokenizer; it learns KL(p_target || q_draft) on the corpus ('corpus', default) or on
text the target samples inside the train step ('generated', slower). About 5 minutes for
'corpus' on 2 CPU cores (800 steps, batch 16 x 128). Arguments: 'corpus' | 'generated',
optionally ',test' (tiny settings for unit tests) or ',DRAFT_SIZE'.
Override the target with --config.spec.target_workdir=DIR.
"""

import ml_collections

from configs import common


def get_config(arg: str = 'corpus') -> ml_collections.ConfigDict:
  parts = (arg or 'corpus').split(',')
  source = parts[0] or 'corpus'
  size = parts[1] if len(parts) > 1 else 'draft'
  c = common.base_config()
  c.objective = 'draft_distill'
  c.model = common.model_config('test' if size in ('draft', 'test') else size,
                                max_seq_len=1024)
  c.spec = ml_collections.ConfigDict(dict(
      target_workdir='runs/spec/target', heads=0, joint=False, base_weight=1.0, decay=0.8,
      exit_layer=0, loss='kl', source=source, kl_weight=1.0, ce_weight=0.0, gen_prompt=32,
      gen_temperature=1.0))
  if size == 'test':
    c.data.seq_len, c.data.batch_size = 32, 8
    c.spec.gen_prompt = 8
    c.train.update(steps=20, warmup_steps=2, log_every=5, eval_every=10, eval_batches=2,
                   checkpoint_every=10, progress_bar=False)
  else:
    c.data.seq_len, c.data.batch_size = 128, 16
    c.train.update(steps=800, learning_rate=3e-3, warmup_steps=80, log_every=50,
                   eval_every=200, eval_batches=8, checkpoint_every=200)
  c.lock()
  return c
