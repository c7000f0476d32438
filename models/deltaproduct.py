"""Gated DeltaProduct (n_h = 1: Gated DeltaNet): the mixer of 'deltaproduct' layers.

Per head, a state S in R^{Dk x Dv}; per token t (Siems et al. 2025, "DeltaProduct"):

  S <- exp(g_t) S                                        (forget gate, when delta_use_gate)
  for j = 1..n_h:  S <- S + beta_tj k_tj (v_tj - S^T k_tj)^T     (n_h Householder steps)
  o_t = S^T q_t / sqrt(Dk)

* q_t [H, Dk], and n_h keys [H, Dk], values [H, Dv] and strengths beta per token from wide
  projections; causal depthwise short convolutions (kernel delta_conv_size) + SiLU on q, k and
  v (SiLU alone when there is no conv); q and k L2-normalised over Dk.
* beta = sigmoid(x W_b), or 2 sigmoid(x W_b) with delta_allow_neg_eigval (Householder
  eigenvalues in [-1, 1] instead of [0, 1]: what parity and group state tracking need).
* g = -exp(A_log) softplus(x W_a + dt_bias); A_log ~ log U(0, 16), dt log-uniform in
  [1e-3, 0.1] (dt_bias = softplus^-1(dt)); both vectors, so the optimizer does not decay them.
* Output: RMSNorm over Dv (float32), times swish(x W_g) with delta_use_output_gate, then the
  output projection [H, Dv] -> D.

Three implementations of the recurrence, chosen by the call (pallas_kernels/delta_rule):
  one token, no per-token states     `delta_product_step` (decoding)
  n_h * T <= delta_chunk_size        the naive scan over the interleaved n_h * T sub-steps
  longer                             the chunked WY form (`delta_rule(impl=delta_impl)`)
  per-token states or a token tree   a scan over tokens that keeps every state (verification)
The interleaved sequence holds token t's sub-steps at t*n_h .. t*n_h + n_h - 1, with g only on
the first sub-step and the query only on the last (as flash-linear-attention does).

Tokens are consumed in call order (a recurrence knows no positions or slots); invalid tokens
(padding) leave the state and the conv buffers untouched. With `parents_BxT` each token's
recurrence starts from its parent's state (token trees). Shapes use J = n_h, Dk, Dv (`k`, `v`
in einsum strings).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

import pallas_kernels.delta_rule as delta_ops
from models import config as config_lib
from models import delta_cache
from models import delta_conv
from models import layers

F32 = jnp.float32


def _a_log_init(key, shape, dtype):
  return jnp.log(jax.random.uniform(key, shape, F32, 1e-3, 16.0)).astype(dtype)


def _dt_bias_init(key, shape, dtype, dt_min=1e-3, dt_max=0.1):
  u = jax.random.uniform(key, shape, F32)
  dt = jnp.maximum(jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)), 1e-4)
  return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)  # softplus^-1(dt)


def _conv_init(key, shape, dtype):
  bound = shape[0] ** -0.5  # PyTorch Conv1d default for a depthwise kernel of width W
  return jax.random.uniform(key, shape, F32, -bound, bound).astype(dtype)


def _l2norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  x = x.astype(F32)
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def token_scan(q_BxTxHxDk, k_BxTxJxHxDk, v_BxTxJxHxDv, beta_BxTxJxH, g_BxTxH, state_BxHxDkxDv,
               parents_BxT, scale):
  """Every per-token state: token t starts from its parent's state (parents -1 = the initial
  state; a chain has parents t - 1). Returns (o_BxTxHxDv, states_BxT1xHxDkxDv) with
  states[:, 0] = the initial state and states[:, t + 1] = the state after token t."""
  B, T = q_BxTxHxDk.shape[:2]
  table = jnp.zeros((B, T + 1) + state_BxHxDkxDv.shape[1:], F32).at[:, 0].set(state_BxHxDkxDv)
  xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q_BxTxHxDk, k_BxTxJxHxDk, v_BxTxJxHxDv,
                                             beta_BxTxJxH, g_BxTxH, parents_BxT))

  def step(carry, x):
    table, t = carry
    q, k, v, beta, g, parent_B = x
    idx = (parent_B + 1).reshape(B, 1, 1, 1, 1)
    S_BxHxkxv = jnp.take_along_axis(table, idx, axis=1)[:, 0]
    o_BxHxv, S_BxHxkxv = delta_ops.delta_product_step(q, k, v, beta, g, S_BxHxkxv, scale=scale)
    return (jax.lax.dynamic_update_slice_in_dim(table, S_BxHxkxv[:, None], t + 1, axis=1),
            t + 1), o_BxHxv

  (table, _), o_TxBxHxDv = jax.lax.scan(step, (table, 0), xs)
  return jnp.moveaxis(o_TxBxHxDv, 0, 1), table


class DeltaProduct(nn.Module):
  """The recurrent mixer (replaces attention in a pre-norm residual block)."""
  cfg: config_lib.ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, valid_BxT: jax.Array,
               cache: delta_cache.DeltaCache | None = None,
               parents_BxT: jax.Array | None = None, return_step_states: bool = False
               ) -> tuple[jax.Array, delta_cache.DeltaCache | None,
                          delta_cache.DeltaCache | None]:
    """Args:
      x_BxTxD: normalised input.
      valid_BxT: False for padding tokens (no effect on the state or the conv buffers).
      cache: this layer's `DeltaCache` (the state before the call), or None (zeros).
      parents_BxT: index within the call of each token's parent (-1 = the cache state), for
        token trees; parents precede children. None = a chain in call order.
      return_step_states: also return the per-token entries (leading [B, T + 1]).

    Returns:
      (out_BxTxD, the cache entry after the call's last token or None without a cache,
       per-token entries or None).
    """
    cfg = self.cfg
    D, H, J = cfg.d_model, cfg.delta_heads, cfg.delta_num_householder
    Dk, Dv, W = cfg.delta_key_dim, cfg.delta_value_dim, cfg.delta_conv_size
    dt, wdt = cfg.compute_dtype, cfg.weight_dtype
    B, T = x_BxTxD.shape[:2]
    init = nn.initializers.normal(cfg.init_std)
    out_init = nn.initializers.normal(cfg.init_std / (2 * cfg.num_layers) ** 0.5)
    param = lambda name, fn, shape, axes: layers.logical_param(self, name, fn, shape, axes, wdt)
    wq = param('q', init, (D, H, Dk), ('embed', 'heads', 'head_dim'))
    wk = param('k', init, (D, J, H, Dk), ('embed', None, 'heads', 'head_dim'))
    wv = param('v', init, (D, J, H, Dv), ('embed', None, 'heads', 'head_dim'))
    wb = param('beta', init, (D, J, H), ('embed', None, 'heads'))
    wo = param('o', out_init, (H, Dv, D), ('heads', 'head_dim', 'embed'))

    x = x_BxTxD.astype(dt)
    q_BxTxHxDk = jnp.einsum('BTD,DHk->BTHk', x, wq.astype(dt))
    k_BxTxJxHxDk = jnp.einsum('BTD,DJHk->BTJHk', x, wk.astype(dt))
    v_BxTxJxHxDv = jnp.einsum('BTD,DJHv->BTJHv', x, wv.astype(dt))

    given = cache
    if cache is None:
      cache = delta_cache.DeltaCache.init(cfg, B, dt)
    anc = delta_conv.Ancestry(valid_BxT, parents_BxT, W)
    # ext = concat(buffer, inputs) per conv, to read the buffers after any token from.
    exts = {'conv_q': q_BxTxHxDk, 'conv_k': k_BxTxJxHxDk, 'conv_v': v_BxTxJxHxDv}
    if W > 0:
      cq = param('conv_q', _conv_init, (W, H, Dk), (None, 'heads', 'head_dim'))
      ck = param('conv_k', _conv_init, (W, J, H, Dk), (None, None, 'heads', 'head_dim'))
      cv = param('conv_v', _conv_init, (W, J, H, Dv), (None, None, 'heads', 'head_dim'))
      q_BxTxHxDk, exts['conv_q'] = delta_conv.short_conv(q_BxTxHxDk, cq, cache.conv_q, anc)
      k_BxTxJxHxDk, exts['conv_k'] = delta_conv.short_conv(k_BxTxJxHxDk, ck, cache.conv_k, anc)
      v_BxTxJxHxDv, exts['conv_v'] = delta_conv.short_conv(v_BxTxJxHxDv, cv, cache.conv_v, anc)
    q_BxTxHxDk = _l2norm(nn.silu(q_BxTxHxDk))
    k_BxTxJxHxDk = _l2norm(nn.silu(k_BxTxJxHxDk))
    v_BxTxJxHxDv = nn.silu(v_BxTxJxHxDv).astype(F32)

    beta_BxTxJxH = jax.nn.sigmoid(jnp.einsum('BTD,DJH->BTJH', x, wb.astype(dt)).astype(F32))
    if cfg.delta_allow_neg_eigval:
      beta_BxTxJxH = 2.0 * beta_BxTxJxH
    valid_f = valid_BxT.astype(F32)
    beta_BxTxJxH = beta_BxTxJxH * valid_f[:, :, None, None]  # padding: identity step
    g_BxTxH = None
    if cfg.delta_use_gate:
      wa = param('a', init, (D, H), ('embed', 'heads'))
      a_log = param('A_log', _a_log_init, (H,), ('heads',))
      dt_bias = param('dt_bias', _dt_bias_init, (H,), ('heads',))
      a_BxTxH = jnp.einsum('BTD,DH->BTH', x, wa.astype(dt)).astype(F32)
      g_BxTxH = -jnp.exp(a_log.astype(F32)) * jax.nn.softplus(a_BxTxH + dt_bias.astype(F32))
      g_BxTxH = g_BxTxH * valid_f[:, :, None]

    scale = Dk ** -0.5
    S0 = cache.state
    steps = None
    if parents_BxT is not None or return_step_states:
      parents = (jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32) - 1, (B, T))
                 if parents_BxT is None else parents_BxT.astype(jnp.int32))
      g = jnp.zeros((B, T, H), F32) if g_BxTxH is None else g_BxTxH
      o_BxTxHxDv, table = token_scan(q_BxTxHxDk, k_BxTxJxHxDk, v_BxTxJxHxDv, beta_BxTxJxH, g,
                                     S0, parents, scale)
      final = table[:, T]
      if return_step_states:
        conv = {n: _buffers_at(ext, anc, jnp.arange(T)).astype(getattr(cache, n).dtype)
                for n, ext in exts.items()}
        steps = delta_cache.stack_steps(cache, cache.replace(state=table[:, 1:], **conv))
    elif T == 1:
      o_BxHxDv, final = delta_ops.delta_product_step(
          q_BxTxHxDk[:, 0], k_BxTxJxHxDk[:, 0], v_BxTxJxHxDv[:, 0], beta_BxTxJxH[:, 0],
          None if g_BxTxH is None else g_BxTxH[:, 0], S0, scale=scale)
      o_BxTxHxDv = o_BxHxDv[:, None]
    else:
      o_BxTxHxDv, final = self._interleaved(q_BxTxHxDk, k_BxTxJxHxDk, v_BxTxJxHxDv,
                                            beta_BxTxJxH, g_BxTxH, S0, scale)

    o_BxTxHxDv = layers.RMSNorm(cfg.norm_eps, 'head_dim', wdt, name='o_norm')(
        o_BxTxHxDv.astype(F32))
    if cfg.delta_use_output_gate:
      wg = param('g', init, (D, H, Dv), ('embed', 'heads', 'head_dim'))
      gate_BxTxHxDv = jnp.einsum('BTD,DHv->BTHv', x, wg.astype(dt)).astype(F32)
      o_BxTxHxDv = o_BxTxHxDv * nn.silu(gate_BxTxHxDv)
    out_BxTxD = jnp.einsum('BTHv,HvD->BTD', o_BxTxHxDv.astype(dt), wo.astype(dt))

    if given is None:
      return out_BxTxD, None, steps
    last = jnp.full((B, 1), T - 1, jnp.int32)
    new = cache.replace(state=final, **{n: _buffers_at(ext, anc, last)[:, 0].astype(
        getattr(cache, n).dtype) for n, ext in exts.items()})
    return out_BxTxD, new, steps

  def _interleaved(self, q_BxTxHxDk, k_BxTxJxHxDk, v_BxTxJxHxDv, beta_BxTxJxH, g_BxTxH, S0,
                   scale):
    """The chain without per-token states: naive scan or chunked form on n_h * T sub-steps."""
    cfg = self.cfg
    B, T, J, H, Dk = k_BxTxJxHxDk.shape
    Dv = v_BxTxJxHxDv.shape[-1]
    L = T * J
    q_f = jnp.zeros((B, T, J, H, Dk), F32).at[:, :, J - 1].set(q_BxTxHxDk).reshape(B, L, H, Dk)
    k_f = k_BxTxJxHxDk.reshape(B, L, H, Dk)
    v_f = v_BxTxJxHxDv.reshape(B, L, H, Dv)
    beta_f = beta_BxTxJxH.reshape(B, L, H)
    g_f = None
    if g_BxTxH is not None:
      g_f = jnp.zeros((B, T, J, H), F32).at[:, :, 0].set(g_BxTxH).reshape(B, L, H)
    if L <= cfg.delta_chunk_size:
      o_f, final = delta_ops.delta_rule_recurrent(q_f, k_f, v_f, beta_f, g_f, scale=scale,
                                                  initial_state_BxHxDkxDv=S0)
    else:
      o_f, final = delta_ops.delta_rule(q_f, k_f, v_f, beta_f, g_f, scale=scale,
                                        chunk_size=cfg.delta_chunk_size,
                                        initial_state_BxHxDkxDv=S0, impl=cfg.delta_impl)
    return o_f.reshape(B, T, J, H, Dv)[:, :, J - 1], final


def _buffers_at(ext_BxExF: jax.Array, anc: delta_conv.Ancestry, index) -> jax.Array:
  """Conv buffers [B, N, Wb, ...] after the tokens `index` ([N] or [B, N])."""
  B = ext_BxExF.shape[0]
  index_BxN = jnp.broadcast_to(jnp.asarray(index, jnp.int32), (B, jnp.shape(index)[-1]))
  return delta_conv.gather_ext(ext_BxExF, anc.buffers(index_BxN))
