"""The cache entry of a recurrent (DeltaProduct / DeltaNet) layer, and the per-token states
that make speculative rollback exact.

A recurrent layer has no key/value per slot: everything it remembers about the committed
tokens is one state per head plus the inputs of its short convolutions. Its entry in
`Cache.layers` is a `DeltaCache`:

  state_BxHxDkxDv          the delta-rule state after the committed tokens (float32)
  conv_q_BxWxHxDk          the last W = conv_size - 1 inputs of the q convolution
  conv_k_BxWxJxHxDk        ... of the k convolution (J = n_h keys per token)
  conv_v_BxWxJxHxDv        ... of the v convolution

(the oldest input first; W = 0 when the layer has no convolution). Slots mean nothing to it:
`gather` is the identity (see `DeltaCache.gather`), and rolling back needs the states that a
forward with `return_step_states=True` returns (`Cache.rewind`, `Cache.select_step`).

Per-token states use the same class with an extra axis after B: entry t of
`step_states.layers[i]` (leading dims [B, T + 1]) is layer i's entry after the first t tokens
of the call; entry 0 is the entry before the call.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from models import config as config_lib


@flax.struct.dataclass
class DeltaCache:
  """Recurrent state + short-conv buffers of one DeltaProduct layer (see module docstring)."""
  state: jax.Array
  conv_q: jax.Array
  conv_k: jax.Array
  conv_v: jax.Array

  @classmethod
  def init(cls, cfg: config_lib.ModelConfig, batch_size: int, dtype=None) -> 'DeltaCache':
    """Zero state (float32) and zero conv buffers (in `dtype`, default the compute dtype)."""
    dtype = jnp.dtype(dtype or cfg.compute_dtype)
    B, H, J = batch_size, cfg.delta_heads, cfg.delta_num_householder
    Dk, Dv, W = cfg.delta_key_dim, cfg.delta_value_dim, max(cfg.delta_conv_size - 1, 0)
    return cls(state=jnp.zeros((B, H, Dk, Dv), jnp.float32),
               conv_q=jnp.zeros((B, W, H, Dk), dtype),
               conv_k=jnp.zeros((B, W, J, H, Dk), dtype),
               conv_v=jnp.zeros((B, W, J, H, Dv), dtype))

  def gather(self, src_BxN: jax.Array, dst_BxN: jax.Array) -> 'DeltaCache':
    """The identity: a recurrent state is not stored per slot, so moving slots moves nothing.

    After verifying a token tree, set the state of the accepted path with
    `Cache.select_step(node_index, step_states)` (before or after `Cache.gather`).
    """
    del src_BxN, dst_BxN
    return self

  def logical_axes(self) -> 'DeltaCache':
    return DeltaCache(state=P('batch', 'heads', 'head_dim', None),
                      conv_q=P('batch', None, 'heads', 'head_dim'),
                      conv_k=P('batch', None, None, 'heads', 'head_dim'),
                      conv_v=P('batch', None, None, 'heads', 'head_dim'))

  def select(self, index_B: jax.Array) -> 'DeltaCache':
    """From per-token entries (leading [B, T + 1]): row b's entry after index_B[b] tokens."""
    index_B = jnp.asarray(index_B, jnp.int32)
    T1 = self.state.shape[1]

    def pick(x):
      idx = jnp.clip(index_B, 0, T1 - 1).reshape((-1,) + (1,) * (x.ndim - 1))
      return jnp.take_along_axis(x, idx, axis=1)[:, 0]

    return jax.tree.map(pick, self)


def stack_steps(before: DeltaCache, after_BxT: DeltaCache) -> DeltaCache:
  """Per-token entries [B, T + 1]: the entry before the call, then after each token."""
  return jax.tree.map(lambda a, b: jnp.concatenate([a[:, None].astype(b.dtype), b], axis=1),
                      before, after_BxT)


@flax.struct.dataclass
class StepStates:
  """What a forward with `return_step_states=True` returns as `ModelOutput.step_states`.

  layers: one entry per layer of the model: None for attention layers (and for layers the
    call did not run), for recurrent layers a `DeltaCache` with leading dims [B, T + 1]
    (entry t = after the first t tokens of the call, entry 0 = before it).
  lengths_B: the cache lengths before the call.

  Use it with `Cache.rewind(keep_B, step_states)` (chains) or `Cache.select_step(index_B,
  step_states)` (trees).
  """
  layers: tuple
  lengths_B: jax.Array
