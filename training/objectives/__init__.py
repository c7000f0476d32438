"""Objectives registered by name: `make_objective(name, model, config) -> loss_fn`.

The modules that register objectives are imported here, explicitly, so this file lists every
objective's home: adding an objective is adding a file with a `@register('name')` factory
(see `ar.py`) and its import below.

  ar.py                ar
  masked_diffusion.py  masked_diffusion, ar_task
  block_diffusion.py   block_diffusion
  wedlm.py             wedlm
  as_arm.py            as_arm
  spec_draft.py        draft_distill
  jacobi_forcing.py    jacobi_forcing (helpers: jacobi_lib.py)
  spec_heads.py        medusa_heads, mtp_heads, kangaroo_adapter
  eagle.py             eagle3_draft, eagle1_draft
  coconut.py           coconut, pause, cot, nocot
  sim_cot.py           sim_cot
  unmask_policy.py     unmask_policy
  skipdecode.py        skipdecode (random layer-skip fine-tuning)
  early_exit.py        early_exit (LayerSkip's early-exit loss at every exit)
  kv_predict.py        kv_predict (auxiliary model + KV predictor on a frozen base)
  chimera.py           chimera_draft
  s2d.py               s2d_soft (nested draft, SoFT)
  ppd.py               ppd_prompts (PPD prompt tokens)
  insertion.py         insertion (insertion LM, ILM)
  mask_mtp.py          mask_mtp (masked-input MTP: mask embeddings, gated LoRA, sampler)
  ctrldiff.py          ctrldiff (CtrlDiff's block-size predictor on a frozen base)
  attribute.py         attribute_classifier (classifier guidance's attribute classifier)
  hamburger.py         hamburger (HAMburger: compositional embedder + micro-step decoder)
  bitlm.py             bitlm (BitLM: causal backbone + bitwise diffusion head, from scratch)
  pipo.py              pipo (PIPO: chunk compressor, MTP and confidence heads on a CoT run)
"""

from training.objectives import ar
from training.objectives import as_arm
from training.objectives import block_diffusion
from training.objectives import chimera
from training.objectives import coconut
from training.objectives import early_exit
from training.objectives import eagle
from training.objectives import hamburger
from training.objectives import insertion
from training.objectives import jacobi_forcing
from training.objectives import kv_predict
from training.objectives import mask_mtp
from training.objectives import masked_diffusion
from training.objectives import ppd
from training.objectives import s2d
from training.objectives import sim_cot
from training.objectives import skipdecode
from training.objectives import spec_draft
from training.objectives import spec_heads
from training.objectives import unmask_policy
from training.objectives import wedlm
from training.objectives import ctrldiff
from training.objectives import attribute
from training.objectives import bitlm
from training.objectives import pipo
from training.objectives.registry import (Batch, LossFn, Objective, ObjectiveFactory,
                                          make_objective, names, register,
                                          token_cross_entropy)

__all__ = ['Batch', 'LossFn', 'Objective', 'ObjectiveFactory', 'make_objective', 'names', 'register',
           'token_cross_entropy']
