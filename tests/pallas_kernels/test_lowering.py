"""Every kernel lowers for its real hardware from this CPU machine (`jax.export` for 'cuda'
and 'tpu'): the Pallas -> Triton IR and Pallas -> Mosaic lowerings run, so unsupported ops,
non-power-of-two Triton tiles or bad TPU block shapes fail here, not first on a GPU/TPU.
(What runs later on the device — Triton's PTX compile, Mosaic's layout passes — is not
covered; benchmarks/kernels.py --check does that on the hardware.)"""

import jax
import jax.numpy as jnp
import pytest
from jax import export

from pallas_kernels import common
from pallas_kernels.decode_attention import decode_attention, tree_attention
from pallas_kernels.delta_rule.chunk import delta_rule_pallas
from pallas_kernels.flash_attention import flash_attention
from pallas_kernels.sampling import fused_sample
from pallas_kernels.spec_verify.fused import chain_verify_pallas, tree_verify_pallas

B, T, H, K, Dh, S, N, V = 2, 256, 4, 2, 128, 1024, 7, 4096


def _all_kernels(family):
  impl = f'pallas_{family}'
  bf = jnp.bfloat16

  def f(q, k, qd, kc, qt, kt, logits):
    seg = jnp.zeros((B, T), jnp.int32)
    attn = lambda q, k: flash_attention(q, k, k, q_segment_ids_BxT=seg, kv_segment_ids_BxS=seg,
                                        mask_BxTxS=jnp.ones((B, T, T), bool), block_causal_size=2,
                                        window=100, impl=impl)
    o, vjp = jax.vjp(attn, q, k)
    grads = vjp(o)
    lengths = jnp.array([100, 1024])
    dec = decode_attention(qd, kc, kc, lengths, mask_BxTxS=jnp.ones((B, 1, S), bool), impl=impl)
    tree = tree_attention(qt, kc, kc, lengths, kt, kt, parents_BxN=jnp.array([-1, 0, 0, 1, 1, 2, 2]),
                          impl=impl)
    tok = fused_sample(logits, logits.astype(jnp.float32), temperature=0.8, top_k=50, top_p=0.9,
                       min_p=0.05, impl=impl)
    dq, dk, dv = q[:, :, :1], q[:, :, :1], jnp.concatenate([q[:, :, :1]] * 2, axis=-1)
    delta = jax.grad(lambda q, k: delta_rule_pallas(
        q, k, dv, jnp.ones(q.shape[:3]), -jnp.ones(q.shape[:3]), impl=impl)[0].astype(
            jnp.float32).sum(), argnums=(0, 1))(dq, dk)
    out = (o, grads, dec, tree, tok, delta)
    if family == 'gpu':  # fused verification has GPU kernels only
      lp = jax.nn.log_softmax(logits.astype(jnp.float32))
      lp4 = jnp.stack([lp] * 4, axis=1)
      drafts = jnp.zeros((B, 3), jnp.int32)
      chain = chain_verify_pallas(lp4, lp4[:, :3], drafts, drafts == 0, jnp.full((B, 3), 0.5),
                                  mode='iid', impl=impl)
      children = jnp.broadcast_to(jnp.array([[1, 2], [3, -1], [-1, -1], [-1, -1]]), (B, 4, 2))
      tree_v = tree_verify_pallas(lp4, None, jnp.zeros((B, 4), jnp.int32), children,
                                  jnp.full((B, 2, 2), 0.5), impl=impl)
      # Traversal Verification: the chain (block verification) and the tree walk
      chain_t = chain_verify_pallas(lp4, lp4[:, :3], drafts, drafts == 0, jnp.full((B, 3), 0.5),
                                    mode='traversal', impl=impl)
      tree_t = tree_verify_pallas(lp4, lp4, jnp.zeros((B, 4), jnp.int32), children,
                                  jnp.full((B, 2, 2), 0.5), mode='traversal', impl=impl)
      # the split sampler: its five kinds of pass (stats, counts, masses, sums, race)
      split = fused_sample(logits, logits.astype(jnp.float32), temperature=0.8, top_k=50,
                           top_p=0.9, min_p=0.05, impl=impl, block_v=256, parts=4)
      out += (chain, tree_v, chain_t, tree_t, split)
    return out

  args = (jnp.zeros((B, T, H, Dh), bf), jnp.zeros((B, T, K, Dh), bf),
          jnp.zeros((B, 1, H, Dh), bf), jnp.zeros((B, S, K, Dh), bf),
          jnp.zeros((B, N, H, Dh), bf), jnp.zeros((B, N, K, Dh), bf), jnp.zeros((B, V), bf))
  return f, args


# From jax 0.11 the Triton lowering reads the GPU's compute capability, so lowering for 'cuda'
# needs a GPU in the process (CI pins jax 0.10.2, where it does not).
_TRITON_NEEDS_A_GPU = (tuple(int(x) for x in jax.__version__.split('.')[:2]) >= (0, 11)
                       and jax.default_backend() != 'gpu')


@pytest.mark.parametrize('family,platform', [('gpu', 'cuda'), ('tpu', 'tpu')])
def test_kernels_lower_for_their_hardware(family, platform):
  if family == 'gpu' and _TRITON_NEEDS_A_GPU:
    pytest.skip(f'jax {jax.__version__} lowers Triton kernels only with a GPU present')
  f, args = _all_kernels(family)
  checks = [export.DisabledSafetyCheck.custom_call('__gpu$xla.gpu.triton')]
  with common.compile_for(family):
    exported = export.export(jax.jit(f), platforms=[platform],
                             disabled_checks=checks if family == 'gpu' else ())(*args)
  text = exported.mlir_module()
  target = '__gpu$xla.gpu.triton' if family == 'gpu' else 'tpu_custom_call'
  # flash fwd, dq, dk/dv; decode; tree (decode kernel with the new-token part); sampling;
  # delta rule forward and backward scans; chain and tree verification, both also under
  # traversal, and the split sampler's passes (GPU).
  assert text.count(target) >= (17 if family == 'gpu' else 8), text.count(target)
