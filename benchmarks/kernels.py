"""Pallas kernels: on-device correctness, then speed against the best peer, side by side.

  python -m benchmarks.kernels                   # GPU (or TPU): checks + every measurement
  python -m benchmarks.kernels --only=check,flash --quick      # a subset, fewer shapes
  python -m benchmarks.kernels --cpu_status      # CPU: interpret-mode checks + what remains

Sections (each prints its table as it finishes; all go to benchmarks/results/kernels.md, the
CPU interpret-mode status to kernels_cpu.md):
  check     every kernel against its XLA reference on this device (bf16 and fp32).
  flash     flash attention forward (and forward+backward) vs cuDNN
            (`jax.nn.dot_product_attention(implementation='cudnn')`) and XLA; T 1k-16k, Dh 64
            and 128, bf16, causal; TFLOP/s and fraction of the device's bf16 peak.
  tree      tree verification (64 nodes over a 2k/8k prefix) vs cuDNN given the same mask.
  decode    decode attention, B 8/32, context 4k/16k: GB/s of K/V read and fraction of HBM peak.
  delta     chunked DeltaProduct forward+backward vs flash-linear-attention's Triton
            `chunk_gated_delta_product` (skipped with a note when fla or our kernel is missing).
  sampling  fused top-k/top-p/min-p sampling vs sort-based top-p (the XLA reference), V 32k-256k,
            B 1-64.
Goals (issue 7): flash >= 0.8x cuDNN; tree >= 2x cuDNN; decode >= 75% of HBM peak; delta
>= 0.8x fla; sampling >= 5x the sort.
"""

from __future__ import annotations

import argparse
import functools
import time
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from pallas_kernels import common as kcommon
from pallas_kernels.decode_attention import ancestor_mask, decode_attention, tree_attention
from pallas_kernels.flash_attention import flash_attention
from pallas_kernels.sampling import fused_sample, gumbel_noise

BF16, F32 = jnp.bfloat16, jnp.float32
SECTIONS = ('check', 'flash', 'tree', 'decode', 'delta', 'sampling')


def _normal(seed: int, shape, dtype=BF16):
  return jax.random.normal(jax.random.key(seed), shape, F32).astype(dtype)


def _time(fn: Callable[[], Any], repeats: int = 10) -> float:
  """Median seconds of fn() (jitted, blocked)."""
  return common.median_time(lambda: jax.block_until_ready(fn()), warmup=2, repeats=repeats)


def _try(fn: Callable[[], Any]) -> Any:
  try:
    return fn()
  except Exception as e:  # pylint: disable=broad-except
    msg = f'{type(e).__name__}: {str(e).splitlines()[0][:80]}' if str(e) else type(e).__name__
    print(f'  failed: {msg}', flush=True)
    return msg


def _err(a, b) -> float:
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-6))


# ----------------------------------------------------------------------------- check


def _guarded(name: str, impl: str, dtype: str, fn: Callable[[], list[list[Any]]]):
  """fn()'s rows, or one failing row naming the exception (a kernel that does not compile or
  run on this device must not hide the checks of the others)."""
  try:
    rows = fn()
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    msg = f'{type(e).__name__}: {str(e).splitlines()[0][:60]}' if str(e) else type(e).__name__
    rows = [[name, impl, 'n/a', dtype, msg, 'n/a', False]]
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
      q, k, v = _normal(0, (2, T, H, Dh), dtype), _normal(1, (2, T, K, Dh), dtype), _normal(
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
        return [[name, impl, f'B2 T{T} H{H} K{K} D{Dh} causal+seg', dn, _err(a, b), tol,
                 _err(a, b) < tol]
                for name, a, b in zip(('flash fwd', 'flash dq', 'flash dk', 'flash dv'), got,
                                      want)]
      rows += _guarded('flash', impl, dn, flash_rows)

      qd, kc, vc = _normal(4, (2, 5, H, Dh), dtype), _normal(5, (2, S, K, Dh), dtype), _normal(
          6, (2, S, K, Dh), dtype)
      lengths = jnp.array([S // 3, S])
      par = jnp.array([-1, 0, 0, 1, 2])
      kt, vt = _normal(7, (2, 5, K, Dh), dtype), _normal(8, (2, 5, K, Dh), dtype)
      arrays = (qd, kc, vc, lengths, kt, vt, par)
      dec = jax.jit(lambda impl, qd, kc, vc, lengths, *_: decode_attention(
          qd[:, :1], kc, vc, lengths, impl=impl), static_argnums=0)
      tree = jax.jit(lambda impl, qd, kc, vc, lengths, kt, vt, par: tree_attention(
          qd, kc, vc, lengths, kt, vt, parents_BxN=par, impl=impl), static_argnums=0)
      for name, f in (('decode', dec), ('tree', tree)):
        def one(f=f, name=name):
          e = _err(f(impl, *arrays), f('xla', *arrays))
          return [[name, impl, f'B2 S{S} H{H} K{K} D{Dh}', dn, e, tol, e < tol]]
        rows += _guarded(name, impl, dn, one)

    rows += _guarded('delta rule', impl, 'float32', lambda: _check_delta_rule(impl, small))
    if impl != 'pallas_tpu':
      rows += _guarded('chain verify', impl, 'float32', lambda: _check_verify(impl, small))
    V = 1000 if small else 128256
    logits = _normal(9, (8, V), F32) * 3
    g = gumbel_noise(jax.random.key(10), (8, V))
    cfg = dict(temperature=0.8, top_k=50, top_p=0.9, min_p=0.02)
    same = jax.jit(lambda impl, logits, g: fused_sample(logits, g, impl=impl, **cfg),
                   static_argnums=0)

    def sampling_rows():
      agree = float((same(impl, logits, g) == same('xla', logits, g)).mean())
      return [['sampling (tokens equal)', impl, f'B8 V{V}', 'float32', 1 - agree, 0.0,
               agree == 1.0]]
    rows += _guarded('sampling', impl, 'float32', sampling_rows)
  return rows


def _check_delta_rule(impl: str, small: bool) -> list[list[Any]]:
  from pallas_kernels.delta_rule.chunk import delta_rule_pallas  # pylint: disable=g-import-not-at-top
  from pallas_kernels.delta_rule.reference import delta_rule_chunked  # pylint: disable=g-import-not-at-top
  B, T, H, Dk, Dv = (1, 50, 2, 16, 32) if small else (2, 1000, 4, 128, 256)
  q, v = _normal(0, (B, T, H, Dk), F32), _normal(1, (B, T, H, Dv), F32)
  k = _normal(2, (B, T, H, Dk), F32)
  k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  beta = 2 * jax.nn.sigmoid(_normal(3, (B, T, H), F32))
  g = -jax.nn.softplus(_normal(4, (B, T, H), F32))

  def run(fn):
    loss = lambda q, k, v, beta, g: fn(q, k, v, beta, g,
                                       chunk_size=16 if small else 64)[0].sum()
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v, beta, g)
  (l1, g1) = run(lambda *a, **kw: delta_rule_pallas(*a, impl=impl, **kw))
  (l2, g2) = run(delta_rule_chunked)
  rows = []
  for name, a, b in (('delta rule fwd', l1, l2), *zip(('delta dq', 'delta dk', 'delta dv'), g1,
                                                      g2)):
    e = _err(a, b)
    rows.append([name, impl, f'B{B} T{T} H{H} Dk{Dk} Dv{Dv} gated', 'float32', e, 1e-4,
                 e < 1e-4])
  return rows


def _check_verify(impl: str, small: bool) -> list[list[Any]]:
  from pallas_kernels.spec_verify import reference as ref  # pylint: disable=g-import-not-at-top
  from pallas_kernels.spec_verify.fused import chain_verify_pallas  # pylint: disable=g-import-not-at-top
  B, G, V = (8, 4, 1000) if small else (64, 6, 128256)
  logp = jax.nn.log_softmax(4 * _normal(0, (B, G + 1, V), F32), axis=-1)
  logq = jax.nn.log_softmax(4 * _normal(1, (B, G, V), F32), axis=-1)
  draft = jnp.argmax(logp[:, :G], axis=-1)
  valid = jnp.ones((B, G), bool)
  u = jax.random.uniform(jax.random.key(2), (B, G))
  n, res = jax.jit(lambda *a: chain_verify_pallas(*a, impl=impl))(logp, logq, draft, valid, u)
  n_ref, res_ref = ref.chain_verify_reference(logp, logq, draft, valid, u, mode='iid')
  fin = np.isfinite(np.asarray(res_ref))
  same = bool((np.asarray(n) == np.asarray(n_ref)).all()
              and (np.isfinite(np.asarray(res)) == fin).all())
  e = _err(np.where(fin, res, 0), np.where(fin, res_ref, 0))
  return [['chain verify (iid)', impl, f'B{B} G{G} V{V}', 'float32', e, 1e-4,
           same and e < 1e-4]]


# ----------------------------------------------------------------------------- speed


def bench_flash(quick: bool, backward: bool = True) -> list[list[Any]]:
  peak, _ = common.device_peaks()
  rows = []
  for Dh in (64, 128):
    H = 2048 // Dh
    for T in ((1024, 4096, 16384) if quick else (1024, 2048, 4096, 8192, 16384)):
      B = max(1, 16384 // T)
      q, k, v = (_normal(i, (B, T, H, Dh)) for i in range(3))
      flops = 4 * B * H * T * T * Dh / 2  # causal: half of the T x T scores
      fns = {
          'ours': jax.jit(lambda q, k, v: flash_attention(q, k, v, causal=True, impl='pallas')),
          'cudnn': jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
              q, k, v, is_causal=True, implementation='cudnn')),
          'xla': jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
              q, k, v, is_causal=True, implementation='xla')),
      }
      times = {n: _try(lambda f=f: _time(lambda: f(q, k, v))) for n, f in fns.items()}
      bwd = {}
      if backward:
        for n in ('ours', 'cudnn'):
          g = jax.jit(jax.grad(lambda q, k, v, f=fns[n]: f(q, k, v).astype(F32).sum(),
                               argnums=(0, 1, 2)))
          bwd[n] = _try(lambda g=g: _time(lambda: g(q, k, v)))
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


def _ratio(t_peer, t_ours):
  if isinstance(t_peer, float) and isinstance(t_ours, float):
    return t_peer / t_ours
  return 'n/a'


def bench_tree(quick: bool) -> list[list[Any]]:
  rows = []
  B, N, H, K, Dh = 8, 64, 32, 8, 128
  for prefix in ((2048,) if quick else (2048, 8192)):
    S = prefix + N
    q = _normal(0, (B, N, H, Dh))
    kc, vc = _normal(1, (B, S, K, Dh)), _normal(2, (B, S, K, Dh))
    kt, vt = kc[:, prefix:], vc[:, prefix:]  # the tree is written right after the prefix
    rng = np.random.default_rng(0)
    parents = jnp.asarray([-1] + [int(rng.integers(0, i)) for i in range(1, N)])
    tmask = ancestor_mask(jnp.broadcast_to(parents, (B, N)))
    lengths = jnp.full((B,), prefix, jnp.int32)
    dense = jnp.concatenate([jnp.ones((B, N, prefix), bool), tmask], axis=-1)
    ours = jax.jit(lambda q, kc, vc, kt, vt, lengths, tmask: tree_attention(
        q, kc, vc, lengths, kt, vt, tree_mask_BxNxN=tmask, impl='pallas'))
    ours_dense = jax.jit(lambda q, kc, vc, dense: decode_attention(
        q, kc, vc, jnp.full((B,), S), mask_BxTxS=dense, impl='pallas'))
    cudnn = jax.jit(lambda q, kc, vc, dense: jax.nn.dot_product_attention(
        q, kc, vc, mask=dense[:, None], implementation='cudnn'))
    t_ours = _try(lambda: _time(lambda: ours(q, kc, vc, kt, vt, lengths, tmask)))
    t_dense = _try(lambda: _time(lambda: ours_dense(q, kc, vc, dense)))
    t_cudnn = _try(lambda: _time(lambda: cudnn(q, kc, vc, dense)))
    ms = lambda t: t * 1e3 if isinstance(t, float) else t
    rows.append([B, prefix, N, ms(t_ours), ms(t_dense), ms(t_cudnn), _ratio(t_cudnn, t_ours)])
    print('  tree', rows[-1], flush=True)
  return rows


def bench_decode(quick: bool) -> list[list[Any]]:
  _, peak_bw = common.device_peaks()
  rows = []
  H, K, Dh = 32, 8, 128
  for B in (8, 32):
    for ctx in ((4096,) if quick else (4096, 16384)):
      q = _normal(0, (B, 1, H, Dh))
      kc, vc = _normal(1, (B, ctx, K, Dh)), _normal(2, (B, ctx, K, Dh))
      lengths = jnp.full((B,), ctx, jnp.int32)
      ours = jax.jit(lambda q, kc, vc: decode_attention(q, kc, vc, lengths, impl='pallas'))
      xla = jax.jit(lambda q, kc, vc: decode_attention(q, kc, vc, lengths, impl='xla'))
      t_ours = _try(lambda: _time(lambda: ours(q, kc, vc)))
      t_xla = _try(lambda: _time(lambda: xla(q, kc, vc)))
      nbytes = 2 * B * ctx * K * Dh * 2
      gbs = lambda t: nbytes / t / 1e9 if isinstance(t, float) else t
      frac = gbs(t_ours) * 1e9 / peak_bw if peak_bw and isinstance(t_ours, float) else 'n/a'
      rows.append([B, ctx, gbs(t_ours), frac, gbs(t_xla), _ratio(t_xla, t_ours)])
      print('  decode', rows[-1], flush=True)
  return rows


def bench_delta(quick: bool) -> tuple[list[list[Any]], str]:
  """Chunked gated DeltaProduct (n_h = 2) forward + backward, ours vs fla."""
  from pallas_kernels.delta_rule.chunk import delta_rule_pallas  # pylint: disable=g-import-not-at-top
  from pallas_kernels.delta_rule.reference import delta_rule_chunked  # pylint: disable=g-import-not-at-top
  B, H, Dk, Dv, nh = 1, 16, 128, 256, 2
  rows, notes = [], []
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from fla.ops.gated_delta_product import chunk_gated_delta_product  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    chunk_gated_delta_product = None
    notes.append(f'fla not importable ({e}): `pip install flash-linear-attention` for the peer.')
  for T in ((4096,) if quick else (4096, 16384)):
    L = nh * T
    q = _normal(0, (B, L, H, Dk))
    k = _normal(1, (B, L, H, Dk), F32)
    k = (k / jnp.linalg.norm(k, axis=-1, keepdims=True)).astype(BF16)
    v = _normal(2, (B, L, H, Dv))
    beta = jax.nn.sigmoid(_normal(3, (B, L, H), F32)) * 2
    g = -jax.nn.softplus(_normal(4, (B, L, H), F32))
    g = g.at[:, 1::nh].set(0.0)  # the gate only on each token's first sub-step

    def loss(q, k, v, impl):
      fn = delta_rule_chunked if impl == 'xla' else functools.partial(delta_rule_pallas,
                                                                      impl=impl)
      o, _ = fn(q, k, v, beta, g)
      return o.astype(F32).sum()
    t = {}
    for impl in ('pallas', 'xla'):
      fn = jax.jit(jax.grad(lambda q, k, v, impl=impl: loss(q, k, v, impl), argnums=(0, 1, 2)))
      t[impl] = _try(lambda fn=fn: _time(lambda: fn(q, k, v), repeats=5))
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
      logits = _normal(0, (B, V), F32) * 4
      g = gumbel_noise(jax.random.key(1), (B, V))
      ours = jax.jit(lambda l, g: fused_sample(l, g, impl='pallas', **cfg))
      sort = jax.jit(lambda l, g: fused_sample(l, g, impl='xla', **cfg))
      t_ours = _try(lambda: _time(lambda: ours(logits, g)))
      t_sort = _try(lambda: _time(lambda: sort(logits, g)))
      us = lambda t: t * 1e6 if isinstance(t, float) else t
      rows.append([V, B, us(t_ours), us(t_sort), _ratio(t_sort, t_ours)])
      print('  sampling', rows[-1], flush=True)
  return rows


# ----------------------------------------------------------------------------- report


REMAINING = """\
Remaining on a GPU (H100), all produced by `python -m benchmarks.kernels` in one run:
- on-device correctness of every kernel (the `check` table: Triton lowering compiled to PTX
  and run, bf16 and fp32) — until then `attention_impl='auto'` stays on XLA;
- flash attention forward (and forward+backward) TFLOP/s vs cuDNN and XLA, T 1k-16k,
  Dh 64/128, bf16, causal (goal >= 0.8x cuDNN, >= 450 TFLOP/s at long T);
- tree attention vs cuDNN with the same mask (goal >= 2x);
- decode attention GB/s at B 8/32, context 4k/16k (goal >= 75% of HBM peak);
- chunked DeltaProduct forward+backward vs fla `chunk_gated_delta_product` at T 4k/16k
  (goal >= 0.8x; needs `pip install flash-linear-attention`);
- fused sampling vs sort-based top-p at V 32k-256k, B 1-64 (goal >= 5x);
- block-size tuning (BlockSizes) for the above;
- not measured by this script: fused chain/tree verification speed (checked for correctness).
Remaining on a TPU: the same `check` with the Mosaic kernels (`impl='pallas'` there; fused
verification has no TPU kernel yet)."""


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--only', default=','.join(SECTIONS), help=f'comma list of {SECTIONS}')
  ap.add_argument('--quick', action='store_true', help='fewer shapes per section')
  ap.add_argument('--cpu_status', action='store_true',
                  help='interpret-mode checks on CPU (both kernel families) and the list of '
                       'what remains to measure on hardware')
  args = ap.parse_args()
  only = set(args.only.split(','))
  here = kcommon.platform()
  sections = []
  check_header = ['kernel', 'impl', 'shape', 'dtype', 'rel. error', 'tol', 'ok']
  if args.cpu_status or here == 'cpu':
    t0 = time.perf_counter()
    rows = checks(('pallas_gpu', 'pallas_tpu'), small=True)
    sections.append(
        '## Correctness in interpret mode on CPU\n\nEvery kernel of both families against '
        'its reference (small shapes; `interpret=True` for the Triton-style GPU kernels, '
        '`pltpu.InterpretParams()` for the Mosaic TPU kernels). The test suite '
        '(`tests/pallas_kernels/`) covers more cases: GQA ratios, lengths that are not '
        'block multiples, padding and fully masked rows, gradients, the model with '
        f"`attention_impl='pallas'`. ({time.perf_counter() - t0:.0f}s)\n\n"
        + common.markdown_table(check_header, rows))
    sections.append('## Not measured yet\n\n' + REMAINING)
  else:
    def run_section(name: str, make: Callable[[], str]) -> None:
      """Runs one section; a crash becomes a note, and the file is rewritten after each
      section so that a run cut short keeps what it measured."""
      if name not in only:
        return
      print(name, flush=True)
      try:
        sections.append(make())
      except Exception as e:  # pylint: disable=broad-except
        traceback.print_exc()
        sections.append(f'## {name}: failed\n\n`{type(e).__name__}: {e}`'[:2000])
      common.write_results('kernels', 'Pallas kernels', '\n\n'.join(sections))

    def section_check() -> str:
      rows = checks(('pallas',), small=False)
      ok = all(r[-1] for r in rows)
      return (f'## Correctness on {here} ({"all pass" if ok else "FAILURES"})\n\n'
              + common.markdown_table(check_header, rows))

    def section_flash() -> str:
      return (
          '## Flash attention, causal, bf16 (TFLOP/s; backward counted as 2.5x forward)\n\n'
          + common.markdown_table(
              ['Dh', 'T', 'B', 'H', 'ours fwd', 'cuDNN fwd', 'XLA fwd', 'ours/cuDNN speed',
               'ours / peak', 'ours fwd+bwd', 'cuDNN fwd+bwd', 'ours/cuDNN fwd+bwd'],
              bench_flash(args.quick)))

    def section_tree() -> str:
      return (
          '## Tree verification attention, bf16, H 32, K 8, Dh 128 (ms)\n\n`ours` gets the '
          'tree K/V and the 64 x 64 ancestor mask apart from the cache; `ours, dense` and '
          'cuDNN get the same dense [N, S] mask over a cache holding the tree.\n\n'
          + common.markdown_table(['B', 'prefix', 'nodes', 'ours', 'ours, dense mask', 'cuDNN',
                                   'cuDNN / ours'], bench_tree(args.quick)))

    def section_decode() -> str:
      return (
          '## Decode attention, bf16, H 32, K 8, Dh 128 (GB/s of K/V read)\n\n'
          + common.markdown_table(['B', 'context', 'ours GB/s', 'ours / HBM peak', 'XLA GB/s',
                                   'ours/XLA speed'], bench_decode(args.quick)))

    def section_delta() -> str:
      rows, note = bench_delta(args.quick)
      return (
          '## Chunked gated DeltaProduct (n_h 2) forward+backward, bf16, B 1, H 16, Dk 128, '
          'Dv 256 (ms)\n\n' + (note + '\n\n' if note else '')
          + common.markdown_table(['T', 'sub-steps', 'ours', 'XLA chunked', 'fla',
                                   'fla / ours'], rows))

    def section_sampling() -> str:
      return (
          '## Fused sampling (temperature 0.8, top-p 0.95) vs the sort (us)\n\n'
          + common.markdown_table(['V', 'B', 'fused', 'sort-based', 'sort / fused'],
                                  bench_sampling(args.quick)))

    # The quick sections first, so that a run cut short by a time limit loses the least.
    run_section('check', section_check)
    run_section('decode', section_decode)
    run_section('tree', section_tree)
    run_section('sampling', section_sampling)
    run_section('delta', section_delta)
    run_section('flash', section_flash)
  body = '\n\n'.join(sections)
  name = 'kernels_cpu' if args.cpu_status or here == 'cpu' else 'kernels'
  path = common.write_results(name, 'Pallas kernels', body)
  print(f'wrote {path}')


if __name__ == '__main__':
  try:
    main()
  except Exception:  # pylint: disable=broad-except
    traceback.print_exc()
    raise
