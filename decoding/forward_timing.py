"""Seconds of one cached forward over T new tokens, timed the way a decode loop runs it.

Used by the adaptive draft length (`speculative/adaptive.py`: relative costs measured when a
decoder is compiled) and by the benchmarks (`benchmarks.cost_model`: the forward-cost curve).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from models import Cache, Transformer
from models import masks
from models import transformer as transformer_lib


def time_min(fn, repeats: int) -> float:
  """The fastest of `repeats` calls of `fn` (which blocks until its result is ready), in
  seconds, after one warm-up call."""
  fn()  # warm-up: the first run of a compiled function allocates
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def forward_time(model: Transformer, params: Any, *, batch: int, tokens: int,
                 repeats: int = 5, **kwargs) -> float:
  """Seconds of one cached forward over `tokens` new tokens per row: the best of `repeats`
  runs of `forward_probe` (whose keyword arguments `kwargs` are)."""
  probe = forward_probe(model, params, batch=batch, tokens=tokens, **kwargs)
  return min(probe() for _ in range(repeats))


def forward_probe(model: Transformer, params: Any, *, batch: int, tokens: int,
                  cache_size: int = 512, context: int = 256, min_seconds: float = 0.2,
                  explicit_mask: bool = False,
                  compiler_options: dict[str, Any] | None = None) -> Callable[[], float]:
  """A compiled probe: each call runs it once and returns the seconds of one cached forward
  over `tokens` new tokens per row after `context` ones (so a caller can time it in turns
  with other programs, under the same load).

  `compiler_options`: XLA options for this program's compile only (e.g.
  {'xla_gpu_enable_triton_gemm': False}), so that one process can compare settings.

  R forwards run in one compiled loop (R chosen so a run lasts about `min_seconds`) with a
  data-dependent stopping condition, as a decode loop runs them (a loop of known trip count
  runs measurably faster on XLA's CPU runtime): forward i writes its T tokens at the next
  free slots after the `context` committed ones, at positions that advance every call
  (cycling through the free slots), and its argmaxes feed the next forward's tokens. A call
  returns its run's time divided by R. The probe is warmed up (one run) before it is
  returned.
  """
  if context + tokens > cache_size:
    raise ValueError(f'context {context} + {tokens} tokens do not fit a cache of '
                     f'{cache_size} slots.')
  cfg = model.cfg
  if cfg.fused_projections:  # the layout a decode loop runs (runner.fused_layouts)
    params = transformer_lib.fuse_projections(params)
  B, T = batch, tokens
  cache = Cache.init(cfg, B, cache_size).replace(lengths=jnp.full((B,), context, jnp.int32))
  rounds = (cache_size - context) // T  # distinct write windows before slots repeat
  t_1xT = jnp.arange(T, dtype=jnp.int32)[None]
  mask = None
  if explicit_mask:  # a chain written as a tree mask: the cost does not depend on its shape
    mask = masks.block_to_cache_mask(jnp.tril(jnp.ones((1, T, T), bool)),
                                     jnp.full((B,), context, jnp.int32), cache_size)

  def run(p, cache, reps):
    def body(carry):
      i, c, tok_BxT = carry
      positions_BxT = jnp.broadcast_to(context + (i % rounds) * T + t_1xT, (B, T))
      out = model.apply({'params': p}, tok_BxT, positions_BxT, cache=c, attn_mask=mask)
      nxt_BxT = jnp.argmax(out.logits_BxTxV, axis=-1).astype(jnp.int32)
      return i + 1, out.cache.replace(lengths=c.lengths), nxt_BxT

    def cond(carry):  # data-dependent, as a decode loop's "until every row is done"
      i, _, tok_BxT = carry
      return (i < reps) & (tok_BxT[0, 0] >= 0)

    init = (jnp.int32(0), cache, jnp.zeros((B, T), jnp.int32))
    return jax.lax.while_loop(cond, body, init)[2]

  # One program for the probe and the timed runs: the trip count is an argument.
  fn = jax.jit(run).lower(params, cache, jnp.int32(2)).compile(compiler_options)
  t2 = time_min(lambda: fn(params, cache, jnp.int32(2)).block_until_ready(), 2)
  reps = int(min(max(min_seconds / max(t2 / 2, 1e-6), 3), 2000))
  reps_arg = jnp.int32(reps)

  def probe() -> float:
    t0 = time.perf_counter()
    fn(params, cache, reps_arg).block_until_ready()
    return (time.perf_counter() - t0) / reps

  probe()  # warm-up: the first run of a compiled function allocates
  return probe
