"""Draft heads on a trained target: Medusa heads, MTP modules, a Kangaroo adapter or an EAGLE
draft layer.

  python train.py --config=configs/lm.py:tiny --workdir=runs/spec/target        # the target
  python train.py --config=configs/spec_heads.py:medusa --workdir=runs/spec/medusa
  python train.py --config=configs/spec_heads.py:mtp --workdir=runs/spec/mtp
  python train.py --config=configs/spec_heads.py:kangaroo --workdir=runs/spec/kangaroo
  python train.py --config=configs/spec_heads.py:eagle3 --workdir=runs/spec/eagle3
  python train.py --config=configs/spec_heads.py:eagle1 --workdir=runs/spec/eagle1
  python train.py --config=configs/spec_heads.py:chimera --workdir=runs/spec/chimera
  python sample.py --workdir=runs/spec/medusa --decoder=ar,medusa --heldout_prompts=8

Each run starts from the target in `spec.target_workdir` (default runs/spec/target; override
with --config.spec.target_workdir=DIR) and, with the base frozen (`spec.joint=False`), trains
only the extra params; the run's workdir then holds target + heads, which is what sample.py
needs. About 5 minutes each for the `tiny` target on 2 CPU cores (600 steps, batch 16 x 128).
`spec.joint=True` trains base and heads together (base next-token loss weighted by
`spec.base_weight`). EAGLE-3 (`eagle3`) unrolls `spec.ttt_steps` = 3 training-time-test
steps (about 6 draft-layer passes over a row per step; `spec.own_head=True` also trains a
correction to the target's output head; `spec.draft_vocab=N` drafts over only the N most
frequent tokens of the training data, as EAGLE-3 does on large vocabularies; Medusa heads
and MTP modules take the same setting), EAGLE-1 (`eagle1`) one step with feature regression into the target's
head. Chimera (`chimera`) trains a trigram encoder, one full-context layer and
`spec.heads` = 4 residual heads by distillation (`spec.loss` = 'kl' | 'mse' | 'ce').
The argument is 'medusa' | 'mtp' | 'kangaroo' | 'eagle3' | 'eagle1' | 'chimera', optionally
',test' (the `test` model preset, 20 steps: unit tests) or ',SIZE' for another target preset;
for `small`/`base` (BPE targets) also pass the target's tokenizer, e.g.
  python train.py --config=configs/spec_heads.py:medusa,small --workdir=runs/gpu/medusa \
      --config.spec.target_workdir=runs/gpu/small --config.tokenizer.kind=bpe \
      --config.tokenizer.path=runs/gpu/small/tokenizer
(benchmarks/gpu_suite.sh spec_small does this on a GPU).
"""

import ml_collections

from configs import common

OBJECTIVES = {'medusa': 'medusa_heads', 'mtp': 'mtp_heads', 'kangaroo': 'kangaroo_adapter',
              'eagle3': 'eagle3_draft', 'eagle1': 'eagle1_draft', 'chimera': 'chimera_draft'}


def get_config(arg: str = 'medusa') -> ml_collections.ConfigDict:
  parts = (arg or 'medusa').split(',')
  kind, size = parts[0], parts[1] if len(parts) > 1 else 'tiny'
  if kind not in OBJECTIVES:
    raise ValueError(f'Unknown head kind {kind!r}; choose one of {sorted(OBJECTIVES)}.')
  c = common.base_config()
  c.objective = OBJECTIVES[kind]
  c.model = common.model_config(size)
  if size in ('small', 'base'):  # as configs/lm.py trains them: bf16 compute, BPE vocabulary
    c.model.dtype = 'bfloat16'   # (pass the target's: --config.tokenizer.kind=bpe
                                 #  --config.tokenizer.path=TARGET/tokenizer)
  c.spec = ml_collections.ConfigDict(dict(
      target_workdir='runs/spec/target',
      heads={'medusa': 4, 'mtp': 3, 'kangaroo': 0, 'eagle3': 0, 'eagle1': 0,
             'chimera': 4}[kind],
      joint=False, base_weight=1.0, decay=0.8, exit_layer=1,
      loss='kl', source='corpus', kl_weight=1.0, ce_weight=0.0, gen_prompt=32,
      gen_temperature=1.0,
      # EAGLE: training-time-test steps, fused target layers ('' = models.eagle default),
      # EAGLE-1's feature-regression weight and input-feature noise.
      ttt_steps=3 if kind == 'eagle3' else 1, feature_layers='', reg_weight=1.0,
      feature_noise=0.2 if kind == 'eagle1' else 0.0,
      # EAGLE-3 may train its own output head: a correction to the target's, zero at the
      # start (off: on `tiny` it raised tau, on `mem` it lowered it; docs/speculative.md).
      own_head=False,
      # EAGLE, Medusa and MTP: a reduced draft vocabulary, the draft_vocab most frequent tokens
      # of the training split (0 = the whole vocabulary), counted over draft_vocab_docs
      # documents (0 = all of them).
      draft_vocab=0, draft_vocab_docs=0))
  if kind == 'eagle1':
    c.spec.ce_weight = 0.1  # EAGLE-1: 1.0 x smooth L1 (feature) + 0.1 x token loss
  common.heads_run_settings(c, size)
  c.lock()
  return c
