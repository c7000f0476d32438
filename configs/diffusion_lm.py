"""Diffusion language models on the embedded code corpus (Python standard library source).

  python train.py --config=configs/diffusion_lm.py:mdlm --workdir=runs/mdlm_tiny      # ~10 min, 2 CPU cores
  python train.py --config=configs/diffusion_lm.py:ar --workdir=runs/ar_tiny          # the same-size AR baseline
  python train.py --config=configs/diffusion_lm.py:bd3 --workdir=runs/bd3_tiny        # block diffusion, blocks of 16
  python train.py --config=configs/diffusion_lm.py:wedlm --workdir=runs/wedlm_tiny    # WeDLM (causal, reordered)
  python train.py --config=configs/diffusion_lm.py:asarm --workdir=runs/asarm_tiny    # any-subset AR (for ASSD)
  python train.py --config=configs/diffusion_lm.py:dream --workdir=runs/dream_tiny \\
      --config.diffusion.init_from=runs/ar_tiny                                        # AR -> diffusion, logit shift
  python train.py --config=configs/diffusion_lm.py:sdar --workdir=runs/sdar_tiny \\
      --config.diffusion.init_from=runs/ar_tiny                                        # AR -> block diffusion, no shift
  python train.py --config=configs/diffusion_lm.py:mdlm,small --workdir=runs/mdlm_small  # 1 GPU, BPE 32k

The argument is `KIND[,SIZE]`: KIND in mdlm, bd3, wedlm, asarm, dream (masked diffusion with the AR
logit shift), sdar (block diffusion without shift), ar; SIZE a preset of configs/common.py
(default tiny). On 2 CPU cores the tiny runs take 8-15 minutes each (1500 steps of 16 x 128
tokens); evaluation reports the ELBO in nats per token and bits per byte.
"""

import ml_collections

from configs import common

KINDS = {  # kind -> (objective, shift)
    'mdlm': ('masked_diffusion', False),
    'dream': ('masked_diffusion', True),
    'bd3': ('block_diffusion', False),
    'sdar': ('block_diffusion', False),
    'wedlm': ('wedlm', True),
    'asarm': ('as_arm', False),
    'ar': ('ar', False),
}


def diffusion_section(shift: bool) -> ml_collections.ConfigDict:
  """See training/objectives/diffusion_lib.py for every key."""
  return ml_collections.ConfigDict(dict(
      mask_id=-1, shift=shift, noise_eps=1e-3, sampling_eps=1e-3, loss_form='mdlm',
      block_size=16, eval_samples=4, init_from='', ar_weight=1.0,
      reinit_tokens=''))


def get_config(arg: str = 'mdlm') -> ml_collections.ConfigDict:
  parts = (arg or 'mdlm').split(',')
  kind, size = parts[0], parts[1] if len(parts) > 1 else 'tiny'
  if kind not in KINDS:
    raise ValueError(f'Unknown kind {kind!r}; choose one of {sorted(KINDS)}.')
  objective, shift = KINDS[kind]
  c = common.base_config()
  c.objective = objective
  c.model = common.model_config(size)
  c.diffusion = diffusion_section(shift)
  c.task = ml_collections.ConfigDict(dict(name=''))
  if size == 'test':
    c.data.seq_len, c.data.batch_size = 32, 8
    c.train.update(steps=20, warmup_steps=2, log_every=5, eval_every=10, eval_batches=2,
                   checkpoint_every=10, progress_bar=False)
    c.diffusion.eval_samples = 1
  elif size == 'tiny':
    c.data.seq_len, c.data.batch_size = 128, 16
    c.train.update(steps=1500, learning_rate=3e-3, warmup_steps=100, log_every=50,
                   eval_every=500, eval_batches=8, checkpoint_every=500)
  else:
    c.tokenizer.update(kind='bpe', vocab_size=32768)
    c.model.dtype = 'bfloat16'
    c.data.seq_len, c.data.batch_size = (1024, 64) if size == 'small' else (2048, 128)
    c.diffusion.block_size = 32
    c.train.update(steps=20_000 if size == 'small' else 50_000, learning_rate=1e-3,
                   warmup_steps=1000, log_every=100, eval_every=1000, eval_batches=16,
                   checkpoint_every=1000)
  c.lock()
  return c
