"""Masked-input multi-token prediction on a trained target ("Your LLM Knows the Future",
arXiv 2507.11851): k <mask> embeddings, a gated LoRA and a sampler head, base frozen.

  python train.py --config=configs/lm.py:tiny --workdir=runs/spec/target        # the target
  python train.py --config=configs/mask_mtp.py --workdir=runs/spec/mask_mtp
  python sample.py --workdir=runs/spec/mask_mtp --decoder=ar,mask_mtp --heldout_prompts=8

The run starts from the target in `spec.target_workdir` (default runs/spec/target) and trains
only params['mask_mtp'] (training/objectives/mask_mtp.py): per row, `spec.anchors` random
anchors each get `spec.heads` masks appended (one forward over the row and all mask blocks,
each block seeing its anchor's prefix); loss = mtp_weight x CE of the masks' own predictions
+ sampler_weight x CE of the sampler head (teacher-forced previous token) + latent_weight x
mean squared distance of each mask's final hidden state to the (stop-gradient) hidden state
of the ordinary position that predicts the same token. `spec.loss='kl'` replaces both CEs by
KL(target || drafter) at that position (self-distillation; the paper trains on data).
36 minutes for the `tiny` target on 2 CPU cores shared with other jobs (600 steps, batch
16 x 128, 16 anchors x 4 masks). The argument is '' (tiny) or 'SIZE' for another target preset, or 'test'
(the `test` model preset, 20 steps: unit tests).
"""

import ml_collections

from configs import common


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  size = arg or 'tiny'
  c = common.base_config()
  c.objective = 'mask_mtp'
  c.model = common.model_config(size)
  if size in ('small', 'base'):  # as configs/lm.py trains them (pass the target's tokenizer)
    c.model.dtype = 'bfloat16'
  c.spec = ml_collections.ConfigDict(dict(
      target_workdir='runs/spec/target',
      heads=3 if size == 'test' else 4,   # k: masks per anchor (= the decoder's largest gamma)
      lora_rank=4 if size == 'test' else 16,
      anchors=4 if size == 'test' else 16,  # mask blocks per training row
      loss='ce', mtp_weight=1.0, sampler_weight=1.0, latent_weight=1.0))
  common.heads_run_settings(c, size)
  c.lock()
  return c
