"""Pallas kernels' speed against the best peer: the measuring sections of
`python -m benchmarks.kernels` (flash, tree, decode, delta, sampling).

Each `bench_*` returns its table's rows (and prints each as it is measured); a timing that
fails becomes its error text in the cell, so one failing peer does not lose a row. The
tables' headings and columns are written by `benchmarks.kernels`.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks.kernel_checks import (BF16, F32, error_text, normal, random_parents,
                                      tree_over_cache, verify_chain_inputs,
                                      verify_tree_inputs)
from pallas_kernels.decode_attention import ancestor_mask, decode_attention, tree_attention
from pallas_kernels.delta_rule.chunk import delta_rule_pallas
from pallas_kernels.delta_rule.reference import delta_rule_chunked
from pallas_kernels.flash_attention import HopperBwdConfig, HopperConfig, flash_attention
from pallas_kernels.sampling import fused_sample, gumbel_noise
from pallas_kernels.spec_verify import reference as verify_ref
from pallas_kernels.spec_verify.fused import chain_verify_pallas, tree_verify_pallas


def time_call(fn: Callable[[], Any], repeats: int = 10) -> float:
  """Median seconds of fn() (jitted, blocked)."""
  return common.median_time(lambda: jax.block_until_ready(fn()), warmup=2, repeats=repeats)


def _try(fn: Callable[[], Any]) -> Any:
  try:
    return fn()
  except Exception as e:  # pylint: disable=broad-except
    msg = error_text(e, 80)
    print(f'  failed: {msg}', flush=True)
    return msg


def _flash_shapes(quick: bool):
  """(Dh, T, B, H, q, k, v, forward FLOPs) of the causal flash comparisons: 2048 model width,
  16k tokens a batch."""
  for Dh in (64, 128):
    H = 2048 // Dh
    for T in ((1024, 4096, 16384) if quick else (1024, 2048, 4096, 8192, 16384)):
      B = max(1, 16384 // T)
      q, k, v = (normal(i, (B, T, H, Dh)) for i in range(3))
      yield Dh, T, B, H, q, k, v, 4 * B * H * T * T * Dh / 2  # causal: half the scores


def _time_fwd_bwd(fns: dict[str, Callable[..., Any]], q, k, v, backward: bool = True):
  """({name: forward seconds or error}, {name: forward+backward seconds or error})."""
  times = {n: _try(lambda f=f: time_call(lambda: f(q, k, v))) for n, f in fns.items()}
  bwd = {}
  for n, f in fns.items() if backward else ():
    g = jax.jit(jax.grad(lambda q, k, v, f=f: f(q, k, v).astype(F32).sum(), argnums=(0, 1, 2)))
    bwd[n] = _try(lambda g=g: time_call(lambda: g(q, k, v)))
  return times, bwd


def _cudnn_causal(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation='cudnn')


def bench_flash(quick: bool, backward: bool = True) -> list[list[Any]]:
  """Rows of FLASH_HEADER: causal bf16 flash attention, ours (the Triton-lowered kernel)
  against cuDNN and XLA."""
  peak, _ = common.device_peaks()
  rows = []
  for Dh, T, B, H, q, k, v, flops in _flash_shapes(quick):
    fns = {
        'ours': jax.jit(lambda q, k, v: flash_attention(q, k, v, causal=True, impl='pallas')),
        'cudnn': jax.jit(_cudnn_causal),
        'xla': jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=True, implementation='xla')),
    }
    times, bwd = _time_fwd_bwd({n: fns[n] for n in ('ours', 'cudnn')}, q, k, v, backward)
    times['xla'] = _try(lambda: time_call(lambda: fns['xla'](q, k, v)))
    tf = lambda t, mult=1.0: flops * mult / t / 1e12 if isinstance(t, float) else t
    row = [Dh, T, B, H, tf(times['ours']), tf(times['cudnn']), tf(times['xla']),
           _ratio(times['cudnn'], times['ours']),
           tf(times['ours']) / (peak / 1e12) if peak and isinstance(times['ours'], float)
           else 'n/a',
           tf(bwd.get('ours', 'n/a'), 3.5), tf(bwd.get('cudnn', 'n/a'), 3.5),
           _ratio(bwd.get('cudnn'), bwd.get('ours'))]
    rows.append(row)
    print('  flash', row, flush=True)
  return rows


FLASH_HEADER = ['Dh', 'T', 'B', 'H', 'ours fwd', 'cuDNN fwd', 'XLA fwd', 'ours/cuDNN speed',
                'ours / peak', 'ours fwd+bwd', 'cuDNN fwd+bwd', 'ours/cuDNN fwd+bwd']


def _jax_mosaic_causal(q, k, v):
  """jax's own Mosaic GPU flash attention (`jax.experimental.pallas.ops.gpu.attention_mgpu`,
  forward only for causal masks in jax 0.10), at the tiles our kernel uses by default. Give
  it float16: jax 0.10's kernel allocates its shared memory as float16 and fails to lower
  for bfloat16 (same tensor-core speed)."""
  from jax.experimental.pallas.ops.gpu import attention_mgpu  # pylint: disable=g-import-not-at-top
  Dh = q.shape[-1]
  config = attention_mgpu.TuningConfig(block_q=64, block_kv=128 if Dh <= 128 else 64,
                                       max_concurrent_steps=2, causal=True)
  return attention_mgpu.attention(q, k, v, config)


def bench_dense_mask_flash(quick: bool) -> list[list[Any]]:
  """Rows of DENSE_HEADER: the explicit case (a dense mask the model builds: block-causal
  blocks of 16, as block-diffusion training, over T = S), forward and forward+backward, ours
  (the flash kernel reading the mask per tile, empty tiles skipped) against cuDNN given the
  same mask, bf16, Dh 128, H 16, 16k tokens a batch."""
  rows = []
  H, Dh = 16, 128
  for T in ((2048,) if quick else (2048, 4096)):
    B = max(1, 16384 // T)
    q, k, v = (normal(i, (B, T, H, Dh)) for i in range(3))
    i = jnp.arange(T)
    dense = jnp.broadcast_to(i[None, :] // 16 <= i[:, None] // 16, (B, T, T))
    fns = {
        'ours': jax.jit(lambda q, k, v: flash_attention(q, k, v, mask_BxTxS=dense,
                                                        causal=False, impl='pallas')),
        'cudnn': jax.jit(lambda q, k, v: _cudnn_masked(q, k, v, dense)),
    }
    times, bwd = _time_fwd_bwd(fns, q, k, v)
    ms = lambda t: t * 1e3 if isinstance(t, float) else t
    rows.append([B, T, 16, ms(times['ours']), ms(times['cudnn']),
                 _ratio(times['cudnn'], times['ours']), ms(bwd['ours']), ms(bwd['cudnn']),
                 _ratio(bwd['cudnn'], bwd['ours'])])
    print('  dense-mask flash', rows[-1], flush=True)
  return rows


DENSE_HEADER = ['B', 'T', 'block', 'ours fwd', 'cuDNN fwd', 'cuDNN / ours', 'ours fwd+bwd',
                'cuDNN fwd+bwd', 'cuDNN / ours fwd+bwd']


def bench_hopper_flash(quick: bool) -> list[list[Any]]:
  """Rows of HOPPER_FLASH_HEADER: our Hopper flash kernel (impl='mosaic') forward, and
  forward+backward with the Triton backward (what impl='mosaic' runs by default) and with the
  Hopper backward, against cuDNN on the flash section's shapes (same run, its own timings),
  and the forward against jax's own Mosaic GPU kernel (the other Hopper kernel a JAX user
  has)."""
  rows = []
  hopper_bwd = HopperConfig(backward=HopperBwdConfig())
  for Dh, T, B, H, q, k, v, flops in _flash_shapes(quick):
    fns = {
        'hopper': jax.jit(lambda q, k, v: flash_attention(q, k, v, causal=True, impl='mosaic')),
        'hopper bwd': jax.jit(lambda q, k, v: flash_attention(
            q, k, v, causal=True, impl='mosaic', hopper_config=hopper_bwd)),
        'cudnn': jax.jit(_cudnn_causal),
    }
    times, bwd = _time_fwd_bwd(fns, q, k, v)
    jax_fn, half = jax.jit(_jax_mosaic_causal), [x.astype(jnp.float16) for x in (q, k, v)]
    t_jax = _try(lambda: time_call(lambda: jax_fn(*half)))
    tf = lambda t, mult=1.0: flops * mult / t / 1e12 if isinstance(t, float) else t
    row = [Dh, T, B, H, tf(times['hopper']), tf(times['cudnn']),
           _ratio(times['cudnn'], times['hopper']), tf(bwd['hopper'], 3.5),
           tf(bwd['hopper bwd'], 3.5), tf(bwd['cudnn'], 3.5), _ratio(bwd['cudnn'], bwd['hopper']),
           _ratio(bwd['cudnn'], bwd['hopper bwd']), tf(t_jax), _ratio(t_jax, times['hopper'])]
    rows.append(row)
    print('  hopper flash', row, flush=True)
  return rows


HOPPER_FLASH_HEADER = ['Dh', 'T', 'B', 'H', 'Hopper fwd', 'cuDNN fwd', 'Hopper/cuDNN speed',
                       'Hopper fwd+bwd', 'Hopper fwd+bwd (Hopper bwd)', 'cuDNN fwd+bwd',
                       'Hopper/cuDNN fwd+bwd', 'Hopper/cuDNN fwd+bwd (Hopper bwd)',
                       'jax Mosaic fwd', 'Hopper/jax Mosaic speed']


def _ratio(t_peer, t_ours):
  if isinstance(t_peer, float) and isinstance(t_ours, float):
    return t_peer / t_ours
  return 'n/a'


def _cudnn_masked(q, k, v, dense_BxTxS):
  return jax.nn.dot_product_attention(q, k, v, mask=dense_BxTxS[:, None],
                                      implementation='cudnn')


def _tree_shapes(quick: bool):
  """(B, prefix, N, q, kc, vc, parents, dense) of the tree comparisons: 64 nodes of a random
  tree written right after a 2k (and 8k) prefix, H 32, K 8, Dh 128, bf16, K/V [B, S, K, Dh];
  dense [B, N, S] is the prefix and each node's ancestors."""
  B, N, H, K, Dh = 8, 64, 32, 8, 128
  for prefix in ((2048,) if quick else (2048, 8192)):
    S = prefix + N
    q = normal(0, (B, N, H, Dh))
    kc, vc = normal(1, (B, S, K, Dh)), normal(2, (B, S, K, Dh))
    parents = random_parents(N)
    dense = tree_over_cache(parents, jnp.full((B,), prefix, jnp.int32), S)
    yield B, prefix, N, q, kc, vc, parents, dense


def bench_tree(quick: bool) -> list[list[Any]]:
  """Rows of TREE_HEADER: our Triton tree attention (the tree's K/V apart, its ancestor
  mask) and our Triton decode kernel given the dense mask, against cuDNN with that mask."""
  rows = []
  for B, prefix, N, q, kc, vc, parents, dense in _tree_shapes(quick):
    S = prefix + N
    kt, vt = kc[:, prefix:], vc[:, prefix:]  # the tree is written right after the prefix
    tmask = ancestor_mask(jnp.broadcast_to(parents, (B, N)))
    lengths = jnp.full((B,), prefix, jnp.int32)
    ours = jax.jit(lambda q, kc, vc, kt, vt, lengths, tmask: tree_attention(
        q, kc, vc, lengths, kt, vt, tree_mask_BxNxN=tmask, impl='pallas'))
    ours_dense = jax.jit(lambda q, kc, vc, dense: decode_attention(
        q, kc, vc, jnp.full((B,), S), mask_BxTxS=dense, impl='pallas'))
    cudnn = jax.jit(_cudnn_masked)
    t_ours = _try(lambda: time_call(lambda: ours(q, kc, vc, kt, vt, lengths, tmask)))
    t_dense = _try(lambda: time_call(lambda: ours_dense(q, kc, vc, dense)))
    t_cudnn = _try(lambda: time_call(lambda: cudnn(q, kc, vc, dense)))
    ms = lambda t: t * 1e3 if isinstance(t, float) else t
    rows.append([B, prefix, N, ms(t_ours), ms(t_dense), ms(t_cudnn), _ratio(t_cudnn, t_ours)])
    print('  tree', rows[-1], flush=True)
  return rows


TREE_HEADER = ['B', 'prefix', 'nodes', 'ours', 'ours, dense mask', 'cuDNN', 'cuDNN / ours']


def bench_hopper_tree(quick: bool) -> list[list[Any]]:
  """Rows of HOPPER_TREE_HEADER: verification of 64 tree nodes (H 32, K 8: 256 query rows
  per kv head) over a cache already holding them, the same dense mask for every
  implementation: our Hopper decode kernel (impl='mosaic') on the decoding cache's layout
  read in place (what the model runs) and on [B, S, K, Dh], cuDNN on [B, S, K, Dh] (the
  kernel against the kernel), and the two other things the model can run from its cache's
  layout (the dispatch's `verify` case): cuDNN through `decode_attention(impl='cudnn')`,
  which copies the cache to [B, S, K, Dh] first, and XLA reading it in place."""
  rows = []
  for B, prefix, N, q, kc, vc, _, dense in _tree_shapes(quick):
    S = prefix + N
    k_cache, v_cache = jnp.swapaxes(kc, 1, 2), jnp.transpose(vc, (0, 2, 3, 1))
    lengths = jnp.full((B,), S, jnp.int32)

    def ours(q, k, v, dense, layout, impl):
      return decode_attention(q, k, v, lengths, mask_BxTxS=dense, impl=impl, kv_layout=layout)
    ours = jax.jit(ours, static_argnums=(4, 5))
    cudnn = jax.jit(_cudnn_masked)
    t_cache = _try(lambda: time_call(lambda: ours(q, k_cache, v_cache, dense, 'cache',
                                                  'mosaic')))
    t_hop = _try(lambda: time_call(lambda: ours(q, kc, vc, dense, 'BSKD', 'mosaic')))
    t_cudnn = _try(lambda: time_call(lambda: cudnn(q, kc, vc, dense)))
    t_copy = _try(lambda: time_call(lambda: ours(q, k_cache, v_cache, dense, 'cache',
                                                 'cudnn')))
    t_xla = _try(lambda: time_call(lambda: ours(q, k_cache, v_cache, dense, 'cache', 'xla')))
    ms = lambda t: t * 1e3 if isinstance(t, float) else t
    rows.append([B, prefix, N, ms(t_cache), ms(t_hop), ms(t_cudnn), _ratio(t_cudnn, t_cache),
                 ms(t_copy), ms(t_xla)])
    print('  hopper tree', rows[-1], flush=True)
  return rows


HOPPER_TREE_HEADER = ['B', 'prefix', 'nodes', 'Hopper, cache layout', 'Hopper', 'cuDNN',
                      'cuDNN / Hopper', 'cuDNN from the cache layout', 'XLA (cache layout)']


def _decode_shapes(quick: bool):
  """(B, context, q, k, v, lengths, K/V bytes) of the decode comparisons: one new token over
  a full cache, H 32, K 8, Dh 128, bf16; and (context '1024 of 4096') over a cache a quarter
  full, as early in a generation (the bytes are those of the slots below the length)."""
  H, K, Dh = 32, 8, 128
  shapes = [(8, 4096, 4096), (8, 1024, 4096), (32, 4096, 4096)]
  if not quick:
    shapes += [(8, 16384, 16384), (32, 16384, 16384)]
  for B, length, S in shapes:
    q = normal(0, (B, 1, H, Dh))
    kc, vc = normal(1, (B, S, K, Dh)), normal(2, (B, S, K, Dh))
    label = S if length == S else f'{length} of {S}'
    yield B, label, q, kc, vc, jnp.full((B,), length, jnp.int32), 2 * B * length * K * Dh * 2


def _decode_time(impl: str, q, k, v, lengths, layout: str = 'BSKD'):
  f = jax.jit(lambda q, k, v: decode_attention(q, k, v, lengths, impl=impl, kv_layout=layout))
  return _try(lambda: time_call(lambda: f(q, k, v)))


def bench_decode(quick: bool) -> list[list[Any]]:
  """Rows of DECODE_HEADER: ours (the Triton-lowered kernel) against XLA."""
  _, peak_bw = common.device_peaks()
  rows = []
  for B, ctx, q, kc, vc, lengths, nbytes in _decode_shapes(quick):
    t_ours = _decode_time('pallas', q, kc, vc, lengths)
    t_xla = _decode_time('xla', q, kc, vc, lengths)
    gbs = lambda t: nbytes / t / 1e9 if isinstance(t, float) else t
    frac = gbs(t_ours) * 1e9 / peak_bw if peak_bw and isinstance(t_ours, float) else 'n/a'
    rows.append([B, ctx, gbs(t_ours), frac, gbs(t_xla), _ratio(t_xla, t_ours)])
    print('  decode', rows[-1], flush=True)
  return rows


DECODE_HEADER = ['B', 'context', 'ours GB/s', 'ours / HBM peak', 'XLA GB/s', 'ours/XLA speed']


def bench_hopper_decode(quick: bool) -> list[list[Any]]:
  """Rows of HOPPER_DECODE_HEADER: our Hopper decode kernel (impl='mosaic') on [B, S, K, Dh]
  and on the decoding cache's layout (k [B, K, S, Dh], v [B, K, Dh, S], read in place),
  against XLA on the cache layout (what `auto` runs there today), the decode section's
  shapes."""
  _, peak_bw = common.device_peaks()
  rows = []
  for B, ctx, q, kc, vc, lengths, nbytes in _decode_shapes(quick):
    k_cache, v_cache = jnp.swapaxes(kc, 1, 2), jnp.transpose(vc, (0, 2, 3, 1))
    t_xla = _decode_time('xla', q, k_cache, v_cache, lengths, 'cache')
    t_hop = _decode_time('mosaic', q, kc, vc, lengths)
    t_cache = _decode_time('mosaic', q, k_cache, v_cache, lengths, 'cache')
    gbs = lambda t: nbytes / t / 1e9 if isinstance(t, float) else t
    frac = lambda t: gbs(t) * 1e9 / peak_bw if peak_bw and isinstance(t, float) else 'n/a'
    rows.append([B, ctx, gbs(t_xla), gbs(t_hop), frac(t_hop), gbs(t_cache), frac(t_cache),
                 _ratio(t_xla, t_cache)])
    print('  hopper decode', rows[-1], flush=True)
  return rows


HOPPER_DECODE_HEADER = ['B', 'context', 'XLA GB/s (cache layout)', 'Hopper GB/s',
                        'Hopper / HBM peak', 'Hopper, cache layout GB/s',
                        'Hopper, cache layout / HBM peak', 'Hopper (cache layout)/XLA speed']


def bench_delta(quick: bool) -> tuple[list[list[Any]], str]:
  """Chunked gated DeltaProduct (n_h = 2) forward + backward, ours vs fla."""
  B, H, Dk, Dv, nh = 1, 16, 128, 256, 2
  rows, notes = [], []
  try:  # the optional peer: torch and fla only when measuring against it
    import torch  # pylint: disable=g-import-not-at-top
    from fla.ops.gated_delta_product import chunk_gated_delta_product  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    chunk_gated_delta_product = None
    notes.append(f'fla not importable ({e}): `pip install flash-linear-attention` for the peer.')
  for T in ((4096,) if quick else (4096, 16384)):
    L = nh * T
    q = normal(0, (B, L, H, Dk))
    k = normal(1, (B, L, H, Dk), F32)
    k = (k / jnp.linalg.norm(k, axis=-1, keepdims=True)).astype(BF16)
    v = normal(2, (B, L, H, Dv))
    beta = jax.nn.sigmoid(normal(3, (B, L, H), F32)) * 2
    g = -jax.nn.softplus(normal(4, (B, L, H), F32))
    g = g.at[:, 1::nh].set(0.0)  # the gate only on each token's first sub-step

    def loss(q, k, v, impl):
      fn = delta_rule_chunked if impl == 'xla' else functools.partial(delta_rule_pallas,
                                                                      impl=impl)
      o, _ = fn(q, k, v, beta, g)
      return o.astype(F32).sum()
    t = {}
    for impl in ('pallas', 'xla'):
      fn = jax.jit(jax.grad(lambda q, k, v, impl=impl: loss(q, k, v, impl), argnums=(0, 1, 2)))
      t[impl] = _try(lambda fn=fn: time_call(lambda: fn(q, k, v), repeats=5))
    t_fla = 'n/a'
    if chunk_gated_delta_product is not None:
      def run_fla():
        dev = 'cuda'
        tq = torch.randn(B, T, H, Dk, device=dev, dtype=torch.bfloat16, requires_grad=True)
        tk = torch.nn.functional.normalize(torch.randn(B, L, H, Dk, device=dev), dim=-1).to(
            torch.bfloat16).requires_grad_()
        tv = torch.randn(B, L, H, Dv, device=dev, dtype=torch.bfloat16, requires_grad=True)
        tb = (torch.rand(B, L, H, device=dev) * 2).to(torch.bfloat16)
        tg = -torch.nn.functional.softplus(torch.randn(B, T, H, device=dev))
        def step():
          o, _ = chunk_gated_delta_product(tq, tk, tv, tg, tb, num_householder=nh)
          o.float().sum().backward()
        for _ in range(2):
          step()
        torch.cuda.synchronize()
        times = []
        for _ in range(5):
          t0 = time.perf_counter()
          step()
          torch.cuda.synchronize()
          times.append(time.perf_counter() - t0)
        return float(np.median(times))
      t_fla = _try(run_fla)
    ms = lambda x: x * 1e3 if isinstance(x, float) else x
    rows.append([T, L, ms(t['pallas']), ms(t['xla']), ms(t_fla), _ratio(t_fla, t['pallas'])])
    print('  delta', rows[-1], flush=True)
  return rows, ' '.join(notes)


def bench_sampling(quick: bool) -> list[list[Any]]:
  rows = []
  cfg = dict(temperature=0.8, top_p=0.95)
  for V in ((32768, 262144) if quick else (32768, 131072, 262144)):
    for B in ((1, 64) if quick else (1, 8, 64)):
      logits = normal(0, (B, V), F32) * 4
      g = gumbel_noise(jax.random.key(1), (B, V))
      ours = jax.jit(lambda l, g: fused_sample(l, g, impl='pallas', **cfg))
      # each row over many programs (pallas_kernels/sampling/split.py), about 512 in all
      split = jax.jit(lambda l, g: fused_sample(l, g, impl='pallas', parts=0, block_v=1024,
                                                **cfg))
      sort = jax.jit(lambda l, g: fused_sample(l, g, impl='xla', **cfg))
      t_ours = _try(lambda: time_call(lambda: ours(logits, g)))
      t_split = _try(lambda: time_call(lambda: split(logits, g)))
      t_sort = _try(lambda: time_call(lambda: sort(logits, g)))
      us = lambda t: t * 1e6 if isinstance(t, float) else t
      rows.append([V, B, us(t_ours), us(t_sort), _ratio(t_sort, t_ours), us(t_split),
                   _ratio(t_sort, t_split)])
      print('  sampling', rows[-1], flush=True)
  return rows


VERIFY_HEADER = ['case', 'mode', 'shape', 'fused', 'reference', 'reference / fused']
VERIFY_V = 128256  # the vocabulary of the verification rows (a module constant: the CPU
                   # tests of this table shrink it, as its inputs are real arrays)


def bench_verify(quick: bool) -> list[list[Any]]:
  """The fused verification kernels against the jnp reference (what `auto` runs), float32
  log-probabilities over V 128256 (us): the chain (G 6, drafts = the target's argmax) under
  'iid' and 'traversal', the 15-node tree of `kernel_checks.verify_tree_inputs` under
  'deterministic' and 'traversal'."""
  rows = []
  V, G = VERIFY_V, 6
  for B in ((1, 64) if quick else (1, 8, 64)):
    chain = verify_chain_inputs(B, V, G)
    lp, lq, tokens, ch, ut = verify_tree_inputs(B, V)
    cases = [('chain', mode, f'B{B} G{G} V{V}', chain,
              functools.partial(chain_verify_pallas, mode=mode, impl='pallas'),
              functools.partial(verify_ref.chain_verify_reference, mode=mode))
             for mode in ('iid', 'traversal')]
    cases += [('tree', mode, f'B{B} T{tokens.shape[1]} V{V}', (lp, q, tokens, ch, u),
               functools.partial(tree_verify_pallas, mode=mode, impl='pallas'),
               functools.partial(verify_ref.tree_verify_reference, mode=mode))
              for mode, q, u in (('deterministic', None, ut[:, :, :3]), ('traversal', lq, ut))]
    for case, mode, shape, args, fused, ref in cases:
      f, r = jax.jit(fused), jax.jit(ref)
      t_f = _try(lambda: time_call(lambda: f(*args)))
      t_r = _try(lambda: time_call(lambda: r(*args)))
      us = lambda t: t * 1e6 if isinstance(t, float) else t
      rows.append([case, mode, shape, us(t_f), us(t_r), _ratio(t_r, t_f)])
      print('  verify', rows[-1], flush=True)
  return rows
