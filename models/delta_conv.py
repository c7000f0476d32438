"""Causal depthwise short convolutions over a chain or a tree of tokens, with their buffers.

A recurrent layer convolves q, k and v over the last `conv_size` tokens *it has consumed*: the
committed tokens (whose last conv_size - 1 inputs sit in the cache buffer), then this call's
valid tokens in order. Padding tokens (invalid) are skipped, and with a token tree the window
of a node runs along its ancestors (node, parent, grandparent, ..., then the buffer).

Everything is expressed with ancestor indices into the extended sequence
`ext = concat(buffer, x)` (E = Wb + T entries, Wb = conv_size - 1):

  ext index of buffer entry i   = i        its parent: i - 1 (-1 = nothing, value 0)
  ext index of token t          = Wb + t   its parent: the nearest valid ancestor token, else
                                           the newest buffer entry Wb - 1

so one code path serves training (a chain without padding), prefill with right padding,
decoding one token, and tree verification.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def nearest_valid_parent(valid_BxT: jax.Array, parents_BxT: jax.Array | None) -> jax.Array:
  """vp[b, t]: the nearest *valid* proper ancestor of token t in this call, or -1.

  parents_BxT None means a chain (parent of t is t - 1). Tree parents must precede their
  children (parents[b, t] < t); -1 = the committed prefix.
  """
  B, T = valid_BxT.shape
  if parents_BxT is None:
    prev_BxT = jnp.where(valid_BxT, jnp.arange(T, dtype=jnp.int32)[None, :], -1)
    running_BxT = jax.lax.cummax(prev_BxT, axis=1)
    return jnp.concatenate([jnp.full((B, 1), -1, jnp.int32), running_BxT[:, :-1]], axis=1)
  parents_BxT = parents_BxT.astype(jnp.int32)
  b_B = jnp.arange(B)

  def body(t, vp_BxT):
    p_B = parents_BxT[:, t]
    safe_B = jnp.maximum(p_B, 0)
    vp_B = jnp.where(p_B < 0, -1, jnp.where(valid_BxT[b_B, safe_B], p_B, vp_BxT[b_B, safe_B]))
    return vp_BxT.at[:, t].set(vp_B)

  return jax.lax.fori_loop(0, T, body, jnp.full((B, T), -1, jnp.int32))


class Ancestry:
  """Ancestor indices into ext = concat(buffer, x) for a call's tokens (see module docstring).

  Attributes:
    window_BxTxW: ext indices of each token's conv window, oldest first (-1 = zero input);
      the last entry is the token itself.
    node_BxT: ext index of the newest input after token t (t itself if valid, else its
      nearest valid ancestor, else the newest buffer entry).
  """

  def __init__(self, valid_BxT: jax.Array, parents_BxT: jax.Array | None, conv_size: int):
    B, T = valid_BxT.shape
    Wb = max(conv_size - 1, 0)
    self.conv_size, self.buffer_len = conv_size, Wb
    vp_BxT = nearest_valid_parent(valid_BxT, parents_BxT)
    tok_parent_BxT = jnp.where(vp_BxT >= 0, Wb + vp_BxT, Wb - 1)
    buf_parent_BxWb = jnp.broadcast_to(jnp.arange(Wb, dtype=jnp.int32) - 1, (B, Wb))
    self.parent_BxE = jnp.concatenate([buf_parent_BxWb, tok_parent_BxT], axis=1)
    self.node_BxT = jnp.where(valid_BxT, Wb + jnp.arange(T, dtype=jnp.int32)[None, :],
                              tok_parent_BxT)
    self.window_BxTxW = self.chain(Wb + jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32),
                                                         (B, T)), conv_size)

  def chain(self, start_BxN: jax.Array, n: int) -> jax.Array:
    """[B, N, n]: ext indices start, parent, grandparent, ... (n of them), oldest first."""
    E = self.parent_BxE.shape[1]
    idx, out = start_BxN, []
    for _ in range(n):
      out.append(idx)
      safe = jnp.clip(idx, 0, max(E - 1, 0))
      parent = jnp.take_along_axis(self.parent_BxE, safe, axis=1) if E else idx
      idx = jnp.where(idx < 0, -1, parent)
    return jnp.stack(out[::-1], axis=2) if out else jnp.zeros(start_BxN.shape + (0,), jnp.int32)

  def buffers(self, index_BxN: jax.Array) -> jax.Array:
    """[B, N, Wb]: ext indices of the conv buffer after tokens index_BxN (oldest first)."""
    node_BxN = jnp.take_along_axis(self.node_BxT, index_BxN, axis=1)
    return self.chain(node_BxN, self.buffer_len)


def gather_ext(ext_BxExF: jax.Array, idx_BxNxW: jax.Array) -> jax.Array:
  """ext[b, idx[b, n, w]] -> [B, N, W, ...]; index -1 gives zeros."""
  B, E = ext_BxExF.shape[:2]
  feat = ext_BxExF.shape[2:]
  padded = jnp.concatenate([ext_BxExF, jnp.zeros((B, 1) + feat, ext_BxExF.dtype)], axis=1)
  N, W = idx_BxNxW.shape[1:]
  flat_BxM = jnp.where(idx_BxNxW < 0, E, idx_BxNxW).reshape(B, N * W)
  idx = flat_BxM.reshape((B, N * W) + (1,) * len(feat))
  out = jnp.take_along_axis(padded, idx, axis=1)
  return out.reshape((B, N, W) + feat)


def short_conv(x_BxTxF: jax.Array, w_WxF: jax.Array, buffer_BxWbxF: jax.Array,
               anc: Ancestry) -> tuple[jax.Array, jax.Array]:
  """Causal depthwise convolution along the ancestry (no activation).

  Args:
    x_BxTxF: inputs (any trailing feature shape F).
    w_WxF: kernel, w[W - 1] weighs the token itself, w[0] the oldest input.
    buffer_BxWbxF: the last Wb = W - 1 inputs before the call, oldest first.
    anc: the call's `Ancestry`.

  Returns:
    (y_BxTxF, ext_BxExF = concat(buffer, x) for reading buffers with `anc.buffers`).
  """
  ext_BxExF = jnp.concatenate([buffer_BxWbxF.astype(x_BxTxF.dtype), x_BxTxF], axis=1)
  win_BxTxWxF = gather_ext(ext_BxExF, anc.window_BxTxW)
  y_BxTxF = jnp.einsum('BTW...,W...->BT...', win_BxTxWxF, w_WxF.astype(x_BxTxF.dtype))
  return y_BxTxF, ext_BxExF
