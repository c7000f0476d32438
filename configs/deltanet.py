"""DeltaNet, DeltaProduct and hybrid LMs on the embedded code corpus (Python standard library).

  python train.py --config=configs/deltanet.py:deltanet --workdir=runs/deltanet        # n_h = 1
  python train.py --config=configs/deltanet.py:deltaproduct2 --workdir=runs/dp2        # n_h = 2
  python train.py --config=configs/deltanet.py:deltaproduct3 --workdir=runs/dp3        # n_h = 3
  python train.py --config=configs/deltanet.py:hybrid --workdir=runs/hybrid  # 3 delta : 1 attn
  python train.py --config=configs/deltanet.py:attention --workdir=runs/attn # same-shape baseline

The argument is `variant[,size]`; size is a preset of configs/common.py (default `tiny`; `test`
for unit tests, `small` for one GPU). At `tiny` (4 layers, width 128, byte vocabulary, 600
steps of 16 x 128 tokens) a run takes about 3 minutes for attention and 3-4x longer for the
delta variants on 2 free CPU cores (the chunked form is written for accelerators); `small`
(12 layers, width 768, BPE 32k) is a single-GPU run.

Every variant has the same layout as `configs/lm.py` at that size; the recurrent layers use
Gated DeltaProduct with head width = head_dim, expand_v 1, short conv 4, output gate, forget
gate, beta in [0, 2] (negative eigenvalues) and chunks of 64 sub-steps. Loss by position
beyond the training length: `python -m benchmarks.length_extrapolation`.
"""

import ml_collections

from configs import common

VARIANTS = {
    'attention': dict(pattern=('attention',), n_h=1),
    'deltanet': dict(pattern=('deltaproduct',), n_h=1),
    'deltaproduct2': dict(pattern=('deltaproduct',), n_h=2),
    'deltaproduct3': dict(pattern=('deltaproduct',), n_h=3),
    'hybrid': dict(pattern=('deltaproduct', 'deltaproduct', 'deltaproduct', 'attention'),
                   n_h=2),
}

DELTA_DEFAULTS = dict(delta_num_heads=0, delta_head_dim=0, delta_expand_v=1.0,
                      delta_allow_neg_eigval=True, delta_use_gate=True,
                      delta_use_output_gate=True, delta_conv_size=4, delta_chunk_size=64,
                      delta_impl='auto')


def get_config(arg: str = 'deltanet') -> ml_collections.ConfigDict:
  variant, _, size = (arg or 'deltanet').partition(',')
  size = size or 'tiny'
  if variant not in VARIANTS:
    raise ValueError(f'Unknown variant {variant!r}; choose one of {sorted(VARIANTS)}.')
  v = VARIANTS[variant]
  c = common.base_config()
  num_layers = common.PRESETS[size]['num_layers']
  pattern = v['pattern']
  layer_types = tuple(pattern[i % len(pattern)] for i in range(num_layers))
  c.model = common.model_config(size, layer_types=layer_types,
                                delta_num_householder=v['n_h'], **DELTA_DEFAULTS)
  common.lm_run_settings(c, size)
  c.lock()
  return c
