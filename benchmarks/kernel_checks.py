"""Pallas kernels on this device against their XLA references: the `check` section of
`python -m benchmarks.kernels` (and, in interpret mode on CPU, of `--cpu_status`).

Each row is [kernel, impl, shape, dtype, rel. error, tol, ok]; a kernel that does not compile
or run on this device gives one failing row naming the exception instead of hiding the rows
of the others. `normal` and `error_text` are shared with the speed sections
(`benchmarks.kernel_speed`).
"""

from __future__ import annotations

import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import common as kcommon
from pallas_kernels.decode_attention import ancestor_mask, decode_attention, tree_attention
from pallas_kernels.delta_rule.chunk import delta_rule_pallas
from pallas_kernels.delta_rule.reference import delta_rule_chunked
from pallas_kernels.flash_attention import HopperBwdConfig, HopperConfig, flash_attention
from pallas_kernels.sampling import fused_sample, gumbel_noise
from pallas_kernels.spec_verify import reference as verify_ref
from pallas_kernels.spec_verify.fused import chain_verify_pallas, tree_verify_pallas

BF16, F32 = jnp.bfloat16, jnp.float32


def normal(seed: int, shape, dtype=BF16):
  """Standard normal numbers of `shape` in `dtype`, drawn in float32 from `seed`."""
  return jax.random.normal(jax.random.key(seed), shape, F32).astype(dtype)


def error_text(e: Exception, limit: int) -> str:
  """'Type: first line of the message' (cut to `limit` characters), for a table cell."""
  return f'{type(e).__name__}: {str(e).splitlines()[0][:limit]}' if str(e) else type(e).__name__


def rel_error(a, b) -> float:
  """max |a - b| / max |b| (float32)."""
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-6))


def _guarded(name: str, impl: str, dtype: str, fn: Callable[[], list[list[Any]]]):
  """fn()'s rows, or one failing row naming the exception (a kernel that does not compile or
  run on this device must not hide the checks of the others)."""
  try:
    rows = fn()
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    rows = [[name, impl, 'n/a', dtype, error_text(e, 60), 'n/a', False]]
  for row in rows:  # as they come: a run cut short still shows what passed
    print('  ' + ' | '.join(f'{x:.3g}' if isinstance(x, float) else str(x) for x in row),
          flush=True)
  return rows


def checks(impls: tuple[str, ...], small: bool) -> list[list[Any]]:
  """Each kernel vs its reference: rows [kernel, impl, shape, dtype, rel. error, tol, ok].

  The references run with full-precision float32 dots: XLA's default on a GPU is TF32, whose
  errors (3e-4 to 2e-3, first H100 run) would hide a kernel's own behind the reference's.
  The kernels ask for full precision themselves (`common.dot_precision`).
  """
  with jax.default_matmul_precision('highest'):
    return _checks(impls, small)


def _checks(impls: tuple[str, ...], small: bool) -> list[list[Any]]:
  rows = []
  T, S = (40, 96) if small else (1000, 4096)
  H, K, Dh = (4, 2, 32) if small else (16, 4, 128)
  for impl in impls:
    for dtype, tol in ((F32, 1e-4), (BF16, 3e-2)):
      dn = jnp.dtype(dtype).name
      q, k, v = normal(0, (2, T, H, Dh), dtype), normal(1, (2, T, K, Dh), dtype), normal(
          2, (2, T, K, Dh), dtype)
      seg = jnp.cumsum(jax.random.bernoulli(jax.random.key(3), 0.01, (2, T)), 1)

      # Every array is an argument of the jitted function: a captured one becomes a constant
      # that XLA may fold at compile time (minutes for a sort over [8, 128k]).
      def flash(impl, q, k, v, seg):
        f = lambda q, k, v: flash_attention(q, k, v, q_segment_ids_BxT=seg,
                                            kv_segment_ids_BxS=seg, impl=impl)
        o, vjp = jax.vjp(f, q, k, v)
        return (o, *vjp(o))
      run = jax.jit(flash, static_argnums=0)

      def flash_rows():
        got, want = run(impl, q, k, v, seg), run('xla', q, k, v, seg)
        return [[name, impl, f'B2 T{T} H{H} K{K} D{Dh} causal+seg', dn, rel_error(a, b), tol,
                 rel_error(a, b) < tol]
                for name, a, b in zip(('flash fwd', 'flash dq', 'flash dk', 'flash dv'), got,
                                      want)]
      rows += _guarded('flash', impl, dn, flash_rows)

      qd, kc, vc = normal(4, (2, 5, H, Dh), dtype), normal(5, (2, S, K, Dh), dtype), normal(
          6, (2, S, K, Dh), dtype)
      lengths = jnp.array([S // 3, S])
      par = jnp.array([-1, 0, 0, 1, 2])
      kt, vt = normal(7, (2, 5, K, Dh), dtype), normal(8, (2, 5, K, Dh), dtype)
      arrays = (qd, kc, vc, lengths, kt, vt, par)
      dec = jax.jit(lambda impl, qd, kc, vc, lengths, *_: decode_attention(
          qd[:, :1], kc, vc, lengths, impl=impl), static_argnums=0)
      tree = jax.jit(lambda impl, qd, kc, vc, lengths, kt, vt, par: tree_attention(
          qd, kc, vc, lengths, kt, vt, parents_BxN=par, impl=impl), static_argnums=0)
      # A sliding window of S / 4 + 7 slots: each row starts mid-block (the blocks before
      # its window are not read).
      window = window_mask(lengths, 1, S, S // 4 + 7)
      win = jax.jit(lambda impl, qd, kc, vc, lengths, *_: decode_attention(
          qd[:, :1], kc, vc, lengths, mask_BxTxS=window, impl=impl), static_argnums=0)
      for name, f in (('decode', dec), ('decode window', win), ('tree', tree)):
        def one(f=f, name=name):
          e = rel_error(f(impl, *arrays), f('xla', *arrays))
          return [[name, impl, f'B2 S{S} H{H} K{K} D{Dh}', dn, e, tol, e < tol]]
        rows += _guarded(name, impl, dn, one)

    rows += _guarded('delta rule', impl, 'float32', lambda: _check_delta_rule(impl, small))
    if impl != 'pallas_tpu':
      # each kernel and mode on its own: one that fails to compile hides no other's row
      for kind, mode in (('chain', 'iid'), ('chain', 'traversal'), ('tree', 'deterministic'),
                         ('tree', 'traversal')):
        name = f'chain verify ({mode})' if kind == 'chain' else f'verify tree ({mode})'
        rows += _guarded(name, impl, 'float32',
                         lambda kind=kind, mode=mode: _check_verify(impl, small, kind, mode))
    V = 1000 if small else 128256
    logits = normal(9, (8, V), F32) * 3
    g = gumbel_noise(jax.random.key(10), (8, V))
    cfg = dict(temperature=0.8, top_k=50, top_p=0.9, min_p=0.02)
    same = jax.jit(lambda impl, logits, g: fused_sample(logits, g, impl=impl, **cfg),
                   static_argnums=0)

    def sampling_rows():
      agree = float((same(impl, logits, g) == same('xla', logits, g)).mean())
      return [['sampling (tokens equal)', impl, f'B8 V{V}', 'float32', 1 - agree, 0.0,
               agree == 1.0]]
    rows += _guarded('sampling', impl, 'float32', sampling_rows)
    if impl != 'pallas_tpu':  # the split sampler has GPU-style kernels only
      split = jax.jit(lambda logits, g: fused_sample(logits, g, impl=impl, parts=0,
                                                     block_v=256 if small else 1024, **cfg))

      def split_rows():
        agree = float((split(logits, g) == same('xla', logits, g)).mean())
        return [['split sampling (tokens equal)', impl, f'B8 V{V}', 'float32', 1 - agree,
                 0.0, agree == 1.0]]
      rows += _guarded('split sampling', impl, 'float32', split_rows)
  return rows


def hopper_checks(small: bool) -> list[list[Any]]:
  """Our Hopper (Mosaic GPU) kernels against XLA: rows as `checks`'. Apart from `checks`, so
  that `benchmarks.kernels` runs them last: a kernel that hangs on a GPU costs only them."""
  with jax.default_matmul_precision('highest'):
    return (_guarded('hopper flash', 'mosaic', 'bfloat16', lambda: _check_hopper(small))
            + _guarded('hopper decode', 'mosaic', 'bfloat16',
                       lambda: _check_hopper_decode(small))
            + _guarded('hopper verify', 'mosaic', 'bfloat16',
                       lambda: _check_hopper_verify(small)))


def _check_hopper(small: bool) -> list[list[Any]]:
  """Our Hopper flash forward (impl='mosaic') with the Triton backward and with the Hopper
  one, against XLA, causal, bf16:
  on a GPU (sm90+) compiled, on a CPU in jax's GPU interpret mode. T is not a block
  multiple, so the padded keys and rows are exercised."""
  B, T, H, K, Dh = (1, 100, 4, 2, 64) if small else (2, 1000, 16, 4, 128)
  q, k, v = (normal(20 + i, (B, T, n, Dh), BF16) for i, n in enumerate((H, K, K)))

  def run(impl, cfg, q, k, v):
    o, vjp = jax.vjp(lambda q, k, v: flash_attention(q, k, v, causal=True, impl=impl,
                                                     hopper_config=cfg), q, k, v)
    return (o, *vjp(o))
  if kcommon.platform() == 'gpu':  # interpreted, eagerly: see tests/pallas_kernels/
    run = jax.jit(run, static_argnums=(0, 1))  # test_flash_hopper.py's note
  want = run('xla', None, q, k, v)
  rows = []
  for suffix, cfg in (('', None), (' (Hopper bwd)', HopperConfig(backward=HopperBwdConfig()))):
    got = run('mosaic', cfg, q, k, v)
    for name, a, b in zip(('fwd', 'dq', 'dk', 'dv'), got, want):
      if suffix and name == 'fwd':
        continue  # the same forward
      e = rel_error(a, b)
      rows.append([f'hopper flash {name}{suffix}', 'mosaic',
                   f'B{B} T{T} H{H} K{K} D{Dh} causal', 'bfloat16', e, 3e-2, e < 3e-2])
  return rows


def _check_hopper_decode(small: bool) -> list[list[Any]]:
  """Our Hopper decode kernel (impl='mosaic') against XLA, bf16, ragged lengths, both
  layouts (the cache's read in place), and with a mask."""
  B, S, H, K, Dh = (2, 200, 4, 2, 64) if small else (4, 4096, 32, 8, 128)
  q, kc, vc = normal(30, (B, 1, H, Dh)), normal(31, (B, S, K, Dh)), normal(32, (B, S, K, Dh))
  lengths = jnp.array([S // 3] + [S] * (B - 1))
  mask = jax.random.bernoulli(jax.random.key(33), 0.7, (B, 1, S)).at[:, :, 0].set(True)
  kt, vt = jnp.swapaxes(kc, 1, 2), jnp.transpose(vc, (0, 2, 3, 1))
  rows = []
  for layout, k, v, m in (('BSKD', kc, vc, None), ('cache', kt, vt, None),
                          ('cache, mask', kt, vt, mask),
                          ('cache, window', kt, vt, window_mask(lengths, 1, S, S // 4 + 7))):
    f = lambda impl, q, k, v, lengths, m, layout=layout.split(',')[0]: decode_attention(
        q, k, v, lengths, mask_BxTxS=m, impl=impl, kv_layout=layout)
    e = rel_error(f('mosaic', q, k, v, lengths, m), f('xla', q, k, v, lengths, m))
    rows.append([f'hopper decode ({layout})', 'mosaic', f'B{B} S{S} H{H} K{K} D{Dh}',
                 'bfloat16', e, 3e-2, e < 3e-2])
  return rows


def window_mask(lengths_B, T: int, S: int, window: int) -> jax.Array:
  """[B, T, S] bool: query t of row b (at position lengths[b] - T + t) sees the `window`
  slots up to its own, as a sliding-window model's decode does."""
  pos = jnp.asarray(lengths_B)[:, None, None] - T + jnp.arange(T)[None, :, None]
  slot = jnp.arange(S)[None, None, :]
  return (slot <= pos) & (slot > pos - window)


def tree_over_cache(parents_N, prefix_B, S: int) -> jax.Array:
  """[B, N, S] bool: N tree nodes written at slots prefix[b] .. prefix[b] + N - 1 of a cache
  of S slots, each seeing the prefix and its ancestors (and itself), nothing after."""
  N, B = parents_N.shape[0], prefix_B.shape[0]
  among = ancestor_mask(jnp.broadcast_to(parents_N, (B, N)))  # [B, N, N]
  rel = jnp.arange(S)[None, None, :] - prefix_B[:, None, None]
  tree = jnp.take_along_axis(among, jnp.clip(rel, 0, N - 1) * jnp.ones((B, N, 1), jnp.int32),
                             axis=2)
  return (rel < 0) | ((rel < N) & tree)


def random_parents(N: int, seed: int = 0) -> jax.Array:
  """[N] int32: a random tree (node 0 the root, each node's parent before it)."""
  rng = np.random.default_rng(seed)
  return jnp.asarray([-1] + [int(rng.integers(0, i)) for i in range(1, N)], jnp.int32)


def _check_hopper_verify(small: bool) -> list[list[Any]]:
  """Our Hopper decode kernel verifying a wide tree (N x G > 128 rows per kv head: row
  blocks; the prefix's tiles unmasked, the tree's masked) over the cache layout, against
  XLA, bf16, ragged prefixes."""
  B, N, H, K, Dh, S = (2, 40, 8, 2, 64, 256) if small else (4, 64, 32, 8, 128, 2112)
  q = normal(34, (B, N, H, Dh))
  k, v = normal(35, (B, K, S, Dh)), normal(36, (B, K, Dh, S))
  prefix = jnp.array([S - N - 77] + [S - N] * (B - 1), jnp.int32)
  mask = tree_over_cache(random_parents(N), prefix, S)
  f = lambda impl: decode_attention(q, k, v, prefix + N, mask_BxTxS=mask, impl=impl,
                                    kv_layout='cache')
  e = rel_error(f('mosaic'), f('xla'))
  return [['hopper verify (cache, tree mask)', 'mosaic',
           f'B{B} N{N} S{S} H{H} K{K} D{Dh}', 'bfloat16', e, 3e-2, e < 3e-2]]


def _check_delta_rule(impl: str, small: bool) -> list[list[Any]]:
  B, T, H, Dk, Dv = (1, 50, 2, 16, 32) if small else (2, 1000, 4, 128, 256)
  q, v = normal(0, (B, T, H, Dk), F32), normal(1, (B, T, H, Dv), F32)
  k = normal(2, (B, T, H, Dk), F32)
  k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  beta = 2 * jax.nn.sigmoid(normal(3, (B, T, H), F32))
  g = -jax.nn.softplus(normal(4, (B, T, H), F32))

  def run(fn):
    loss = lambda q, k, v, beta, g: fn(q, k, v, beta, g,
                                       chunk_size=16 if small else 64)[0].sum()
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v, beta, g)
  (l1, g1) = run(lambda *a, **kw: delta_rule_pallas(*a, impl=impl, **kw))
  (l2, g2) = run(delta_rule_chunked)
  rows = []
  for name, a, b in (('delta rule fwd', l1, l2), *zip(('delta dq', 'delta dk', 'delta dv'), g1,
                                                      g2)):
    e = rel_error(a, b)
    rows.append([name, impl, f'B{B} T{T} H{H} Dk{Dk} Dv{Dv} gated', 'float32', e, 1e-4,
                 e < 1e-4])
  return rows


def _verify_row(name, impl, shape, got, want) -> list[Any]:
  """A row comparing (counts, ..., residual log p) with the reference's: the integer outputs
  equal, the residual's support equal, its finite entries within 1e-4."""
  ints_equal = all(bool((np.asarray(a) == np.asarray(b)).all())
                   for a, b in zip(got[:-1], want[:-1]))
  res, res_ref = np.asarray(got[-1]), np.asarray(want[-1])
  fin = np.isfinite(res_ref)
  same = ints_equal and bool((np.isfinite(res) == fin).all())
  e = rel_error(np.where(fin, res, 0), np.where(fin, res_ref, 0))
  return [name, impl, shape, 'float32', e, 1e-4, same and e < 1e-4]


def verify_chain_inputs(B: int, V: int, G: int = 6):
  """The fused chain kernel's arguments: (logp [B, G+1, V], logq [B, G, V], drafts [B, G]
  (the target's argmax), valid, u [B, G])."""
  logp = jax.nn.log_softmax(4 * normal(0, (B, G + 1, V), F32), axis=-1)
  logq = jax.nn.log_softmax(4 * normal(1, (B, G, V), F32), axis=-1)
  draft = jnp.argmax(logp[:, :G], axis=-1)
  return (logp, logq, draft, jnp.ones((B, G), bool),
          jax.random.uniform(jax.random.key(2), (B, G)))


def verify_tree_inputs(B: int, V: int):
  """The fused tree kernels' arguments: (logp, logq [B, T, V], tokens [B, T] drawn from the
  parents' q, children [B, T, 3], u [B, D, 5]) for a 15-node tree (fan-out 3, 2, 1 by depth;
  q near p, so paths get deep). The deterministic tree takes no q and u[:, :, :3]."""
  parents = [-1, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7, 8]
  T, K, D = len(parents), 3, 3
  children = np.full((T, K), -1)
  for i, p in enumerate(parents[1:], 1):
    children[p, list(children[p]).index(-1)] = i
  lp = jax.nn.log_softmax(4 * normal(3, (B, T, V), F32), axis=-1)
  lq = jax.nn.log_softmax(lp + normal(4, (B, T, V), F32), axis=-1)
  tokens = jax.random.categorical(jax.random.key(5), lq, axis=-1)[:, np.maximum(parents, 0)]
  ch = jnp.broadcast_to(jnp.asarray(children), (B, T, K))
  ut = jax.random.uniform(jax.random.key(6), (B, D, (T + D - 2) // D), minval=1e-6)
  return lp, lq, tokens, ch, ut


def _check_verify(impl: str, small: bool, kind: str, mode: str) -> list[list[Any]]:
  """A fused verification kernel (kind 'chain' or 'tree') under `mode` against the
  reference, on `verify_chain_inputs` / `verify_tree_inputs`: the chain at B 64, G 6, the
  tree at B 16 (V 128256; small: B 8, G 4, V 1000)."""
  B, G, V = (8, 4, 1000) if small else (64, 6, 128256)
  if kind == 'chain':
    chain = verify_chain_inputs(B, V, G)
    got = jax.jit(lambda *a: chain_verify_pallas(*a, mode=mode, impl=impl))(*chain)
    want = verify_ref.chain_verify_reference(*chain, mode=mode)
    return [_verify_row(f'chain verify ({mode})', impl, f'B{B} G{G} V{V}', got, want)]
  Bt = B if small else 16
  lp, lq, tokens, ch, ut = verify_tree_inputs(Bt, V)
  q, u = (None, ut[:, :, :3]) if mode == 'deterministic' else (lq, ut)
  got = jax.jit(lambda *a: tree_verify_pallas(*a, mode=mode, impl=impl))(lp, q, tokens, ch, u)
  want = verify_ref.tree_verify_reference(lp, q, tokens, ch, u, mode=mode)
  return [_verify_row(f'verify tree ({mode})', impl, f'B{Bt} T{tokens.shape[1]} V{V}', got,
                      want)]
