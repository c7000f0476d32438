"""The decoding cache: fixed-size buffers, per-row lengths, rollback and gather.

Slots are not positions. A forward call writes the keys/values of its T tokens at
`write_slots` and records each token's logical position per slot; RoPE and causal masking use
positions, visibility uses slots:

  a key at slot s is visible to the call  iff  s < lengths[b] (committed before the call)
                                                or s is written by this call.

After the call `lengths[b] = max(lengths[b], 1 + largest slot written)`: writes commit. A
decoder rolls back with `truncate` (nothing is erased; stale slots past the length are simply
invisible and get overwritten) and moves an accepted tree path into contiguous slots with
`gather`. A token whose position or write slot is negative is padding: it is not written.

A move can also be owed (`gather(..., defer=True)`, what a speculative loop does after each
verified tree): positions and lengths move at once, the keys and values of every attention
layer move when the next forward writes that layer — the moved entries join the call's own
in one scatter (`KVCache.write`), instead of a gather and a scatter per layer and tensor
between two forwards. Every writer takes its layers from `Cache.layer(i)`, which hands the
owed moves along; `end_write` pays them in layers a call did not write, `settle` pays them
all.

Layout, per attention layer: keys k [B, K, S, Dh] and values transposed, v [B, K, Dh, S], so
both products of attention contract the minor dimension of both operands, per (row, kv head):
scores = q [G*T, Dh] . k [S, Dh] and out = p [G*T, S] . v [Dh, S] — the operand layout XLA's
CPU matrix products take as they lie (any other layout made it copy every layer's whole cache
into that one on every step; on a GPU either is free); shared: positions [B, S] (-1 = never
written) and lengths [B].

Recurrent (DeltaProduct) layers keep a state and short-conv buffers instead
(`models.delta_cache.DeltaCache`); lengths and positions still advance with the slots written,
so hybrids work. A state cannot be rolled back by `truncate`: a forward with
`return_step_states=True` returns the state after every token, and `rewind(keep, step_states)`
/ `select_step(index, step_states)` roll back exactly.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from models import config as config_lib
from models import delta_cache

K_AXES = P('batch', 'kv_heads', 'cache_seq', 'head_dim')
V_AXES = P('batch', 'kv_heads', 'head_dim', 'cache_seq')
# Calls of up to this many tokens find the slots they write by comparison (decode steps,
# draft rounds, verification trees), longer ones by a scatter.
_COMPARE_MAX = 128


def _never_single(slots_BxT: jax.Array, *updates: jax.Array
                 ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
  """Adds a dropped (out-of-range) write when a call writes a single slot.

  XLA turns a one-update scatter into a dynamic-update-slice; inside a decode loop at batch
  1 its fusion pass then duplicates that update into each consumer of the written buffer
  (the attention's matrix products read it through a reshape), and every duplicate needs
  its own copy of the whole buffer: every layer's cache was copied three times per step. A
  second, dropped update keeps it a scatter, which updates the buffer in place.
  """
  if slots_BxT.size != 1:
    return slots_BxT, updates
  pad = lambda x: jnp.concatenate([x, x], axis=1)  # the T axis; the copy is never written
  return (jnp.concatenate([slots_BxT, jnp.full_like(slots_BxT, jnp.iinfo(jnp.int32).max)],
                          axis=1), tuple(pad(u) for u in updates))


@flax.struct.dataclass
class Moves:
  """Slot moves owed to the attention layers: slot src[b, i] -> dst[b, i], all read before
  any is written. Sanitised: dst = S (the cache size) is no move, src is in range."""
  src_BxN: jax.Array
  dst_BxN: jax.Array

  @classmethod
  def none(cls, batch_size: int, n: int, size: int) -> 'Moves':
    """n owed moves that move nothing."""
    return cls(src_BxN=jnp.zeros((batch_size, n), jnp.int32),
               dst_BxN=jnp.full((batch_size, n), size, jnp.int32))

  def dst_besides(self, slots_BxT: jax.Array, size: int) -> jax.Array:
    """dst [B, N] with the moves onto a slot in `slots` dropped (= size): a call's own
    entry wins, whatever order a backend applies one scatter's duplicate indices in."""
    hit_BxN = jnp.any(self.dst_BxN[:, :, None] == slots_BxT[:, None, :], axis=-1)
    return jnp.where(hit_BxN, size, self.dst_BxN)


@flax.struct.dataclass
class KVCache:
  """Keys [B, K, S, Dh] and values [B, K, Dh, S] (transposed) of one attention layer.

  `owed`: moves to make before this write's (set by `Cache.layer`, never stored in a Cache).
  """
  k: jax.Array
  v: jax.Array
  owed: Moves | None = None

  def write(self, k_BxTxKxDh: jax.Array, v_BxTxKxDh: jax.Array,
            slots_BxT: jax.Array) -> 'KVCache':
    """Writes at `slots` (already sanitised: out-of-range slots are dropped), after the owed
    moves: the moved entries are gathered from the cache as it was and scattered with the
    new ones in one update; a slot this call writes keeps the call's entry."""
    b_Bx1 = jnp.arange(slots_BxT.shape[0])[:, None]
    if self.owed is not None:
      src_BxN, dst_BxN = self.owed.src_BxN, self.owed.dst_besides(slots_BxT, self.k.shape[2])
      k_BxTxKxDh = jnp.concatenate(
          [self.k[b_Bx1, :, src_BxN], k_BxTxKxDh.astype(self.k.dtype)], axis=1)
      v_BxTxKxDh = jnp.concatenate(
          [self.v[b_Bx1, :, :, src_BxN], v_BxTxKxDh.astype(self.v.dtype)], axis=1)
      slots_BxT = jnp.concatenate([dst_BxN, slots_BxT], axis=1)
    slots_BxT, (k_BxTxKxDh, v_BxTxKxDh) = _never_single(slots_BxT, k_BxTxKxDh, v_BxTxKxDh)
    # Advanced indices apart from the slices: both updates are indexed [B, T, K, Dh].
    k = self.k.at[b_Bx1, :, slots_BxT].set(k_BxTxKxDh.astype(self.k.dtype), mode='drop')
    v = self.v.at[b_Bx1, :, :, slots_BxT].set(v_BxTxKxDh.astype(self.v.dtype), mode='drop')
    return KVCache(k=k, v=v)

  def gather(self, src_BxN: jax.Array, dst_BxN: jax.Array) -> 'KVCache':
    """Copies slots src -> dst per row (dst out of range: dropped)."""
    b_Bx1 = jnp.arange(src_BxN.shape[0])[:, None]
    src = jnp.clip(src_BxN, 0, self.k.shape[2] - 1)
    return KVCache(
        k=self.k.at[b_Bx1, :, dst_BxN].set(self.k[b_Bx1, :, src], mode='drop'),
        v=self.v.at[b_Bx1, :, :, dst_BxN].set(self.v[b_Bx1, :, :, src], mode='drop'))

  def logical_axes(self) -> 'KVCache':
    return KVCache(k=K_AXES, v=V_AXES)


MOVES_AXES = Moves(src_BxN=P('batch', None), dst_BxN=P('batch', None))


def begin_call(cache: 'Cache | None', positions_BxT: jax.Array,
               write_slots_BxT: jax.Array | None = None
               ) -> tuple[jax.Array | None, jax.Array, jax.Array]:
  """(write slots, key positions, key validity) of a call over T tokens: `Cache.begin_write`
  (slots default to the positions), or without a cache (None, the call's own positions,
  positions >= 0): the call's tokens are then the keys."""
  if cache is None:
    return None, positions_BxT, positions_BxT >= 0
  if write_slots_BxT is None:
    write_slots_BxT = positions_BxT
  return cache.begin_write(positions_BxT, write_slots_BxT)


@flax.struct.dataclass
class Cache:
  """Per-layer state plus the slot bookkeeping shared by all layers."""
  layers: tuple[Any, ...]
  positions: jax.Array  # [B, S] int32, logical position stored at each slot, -1 if unwritten.
  lengths: jax.Array  # [B] int32, committed slots per row.
  moves: Moves | None = None  # owed to the attention layers (see the module doc)

  @classmethod
  def init(cls, cfg: config_lib.ModelConfig, batch_size: int, size: int,
           dtype: Any = None) -> 'Cache':
    """An empty cache of `size` slots for `batch_size` rows (K/V in `dtype`, default compute)."""
    if size <= 0 or batch_size <= 0:
      raise ValueError(f'Cache needs a positive batch and size, got {batch_size} and {size}.')
    dtype = jnp.dtype(dtype or cfg.compute_dtype)
    layers = []
    for kind in cfg.layer_types:
      if kind == config_lib.ATTENTION:
        k_shape = (batch_size, cfg.num_kv_heads, size, cfg.head_dim)
        v_shape = (batch_size, cfg.num_kv_heads, cfg.head_dim, size)
        layers.append(KVCache(k=jnp.zeros(k_shape, dtype), v=jnp.zeros(v_shape, dtype)))
      elif kind == config_lib.DELTAPRODUCT:
        layers.append(delta_cache.DeltaCache.init(cfg, batch_size, dtype))
      else:
        raise ValueError(f'No cache for layer type {kind!r}.')
    return cls(layers=tuple(layers),
               positions=jnp.full((batch_size, size), -1, jnp.int32),
               lengths=jnp.zeros((batch_size,), jnp.int32))

  @property
  def size(self) -> int:
    return self.positions.shape[1]

  @property
  def batch_size(self) -> int:
    return self.positions.shape[0]

  def layer(self, i: int) -> Any:
    """Layer i's state for a call that writes it: an attention layer carries the owed moves,
    which its `write` makes."""
    layer = self.layers[i]
    if self.moves is not None and isinstance(layer, KVCache):
      layer = layer.replace(owed=self.moves)
    return layer

  def owing(self, n: int) -> 'Cache':
    """This cache with room for n owed moves, none owed yet: the form a loop that defers
    its gathers carries from its first step (a loop's state keeps one structure)."""
    if self.moves is not None:
      raise ValueError('This cache already has owed moves; settle() it first.')
    return self.replace(moves=Moves.none(self.batch_size, n, self.size))

  def settle(self) -> 'Cache':
    """Makes the owed moves in every attention layer now (no moves owed after)."""
    if self.moves is None:
      return self
    src_BxN, dst_BxN = self.moves.src_BxN, self.moves.dst_BxN
    layers = tuple(layer.gather(src_BxN, dst_BxN) if isinstance(layer, KVCache) else layer
                   for layer in self.layers)
    return self.replace(layers=layers, moves=None)

  def begin_write(self, positions_BxT: jax.Array, write_slots_BxT: jax.Array
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Bookkeeping for a call that writes T tokens.

    Returns:
      slots_BxT: where to write; padding (negative position or slot) and slots past the end
        are mapped to S, which every write drops.
      key_pos_BxS: the position held at each slot once this call has written.
      key_valid_BxS: committed slots plus the slots this call writes.
    """
    B, S = self.positions.shape
    bad = (positions_BxT < 0) | (write_slots_BxT < 0) | (write_slots_BxT >= S)
    slots_BxT = jnp.where(bad, S, write_slots_BxT).astype(jnp.int32)
    b_Bx1 = jnp.arange(B)[:, None]
    if slots_BxT.shape[1] <= _COMPARE_MAX:  # fused comparisons, no fills and scatters
      hit_BxTxS = slots_BxT[:, :, None] == jnp.arange(S)[None, None, :]
      written_BxS = jnp.any(hit_BxTxS, axis=1)
      # A slot written twice in one call keeps the larger position (a scatter: either).
      new_pos_BxS = jnp.max(jnp.where(hit_BxTxS, positions_BxT.astype(jnp.int32)[:, :, None],
                                      -1), axis=1)
      key_pos_BxS = jnp.where(written_BxS, new_pos_BxS, self.positions)
    else:  # a long call (a prefill): T x S comparisons would cost more than the scatters
      write_BxT, (pos_BxT,) = _never_single(slots_BxT, positions_BxT.astype(jnp.int32))
      key_pos_BxS = self.positions.at[b_Bx1, write_BxT].set(pos_BxT, mode='drop')
      written_BxS = jnp.zeros((B, S + 1), jnp.bool_).at[b_Bx1, slots_BxT].set(True)[:, :S]
    key_valid_BxS = (jnp.arange(S)[None, :] < self.lengths[:, None]) | written_BxS
    return slots_BxT, key_pos_BxS, key_valid_BxS

  def end_write(self, layers: tuple[Any, ...], key_pos_BxS: jax.Array,
                slots_BxT: jax.Array) -> 'Cache':
    """The cache after the call: new layer states, positions recorded, lengths grown.

    `layers[i] is self.layers[i]` marks a layer the call did not write: it gets the owed
    moves now (a written attention layer made them in its write, see `layer`)."""
    if self.moves is not None:
      src_BxN, dst_BxN = self.moves.src_BxN, self.moves.dst_BxN
      layers = tuple(new.gather(src_BxN, dst_BxN)
                     if new is old and isinstance(new, KVCache) else new
                     for new, old in zip(layers, self.layers))
    if any(isinstance(layer, KVCache) and layer.owed is not None for layer in layers):
      raise ValueError('A layer came back with its owed moves unmade: write it with '
                       'KVCache.write, or return the layer Cache.layers holds.')
    written_end_B = jnp.max(jnp.where(slots_BxT < self.size, slots_BxT + 1, 0), axis=1)
    return Cache(layers=layers, positions=key_pos_BxS,
                 lengths=jnp.maximum(self.lengths, written_end_B).astype(jnp.int32))

  def truncate(self, lengths_B: jax.Array) -> 'Cache':
    """Rolls rows back to `lengths` (never grows a row). Attention-only caches: a recurrent
    state cannot be rolled back from lengths alone (use `rewind`)."""
    if any(isinstance(layer, delta_cache.DeltaCache) for layer in self.layers):
      raise ValueError('Cache.truncate cannot roll back recurrent (deltaproduct) layers. Run '
                       'the forward with return_step_states=True and use '
                       'cache.rewind(keep_B, out.step_states) instead.')
    lengths = jnp.minimum(self.lengths, jnp.asarray(lengths_B, jnp.int32))
    return self.replace(lengths=lengths)

  def select_step(self, index_B: jax.Array,
                  step_states: 'delta_cache.StepStates') -> 'Cache':
    """Recurrent layers take their state after token index_B[b] of the call that returned
    `step_states` (-1 = before the call; with a token tree: the state at the end of the path
    to that node). Attention layers and lengths are unchanged (pair with `gather`)."""
    index_B = jnp.asarray(index_B, jnp.int32)
    layers = tuple(layer if steps is None else steps.select(index_B + 1)
                   for layer, steps in zip(self.layers, step_states.layers))
    return self.replace(layers=layers)

  def rewind(self, keep_B: jax.Array, step_states: 'delta_cache.StepStates') -> 'Cache':
    """Keeps only the first keep_B[b] tokens of the call that returned `step_states`.

    Recurrent layers get their state after those tokens (keep 0 = the state before the call);
    lengths become (lengths before the call) + keep, which assumes the call wrote its tokens
    at consecutive slots from the row's length (the default: positions continue the row).
    Exact: continuing from the rewound cache equals having fed only the kept tokens.
    """
    keep_B = jnp.asarray(keep_B, jnp.int32)
    out = self.select_step(keep_B - 1, step_states)
    return out.replace(lengths=jnp.minimum(self.lengths, step_states.lengths_B + keep_B))

  def gather(self, src_slots_BxN: jax.Array, dst_slots_BxN: jax.Array,
             lengths_B: jax.Array | None = None, *, defer: bool = False) -> 'Cache':
    """Moves slots src -> dst in every layer (a tree path into contiguous slots).

    Entries with a negative src or dst are skipped. If `lengths` is given the rows are then
    set to those lengths (e.g. prefix + accepted path). `defer`: positions and lengths move
    now, the attention layers' keys and values when the next forward writes them (a loop
    carries the cache in that form from its start, see `owing`). Moves already owed are
    made first.
    """
    if self.moves is not None:  # moves owed are made first
      return self.settle().gather(src_slots_BxN, dst_slots_BxN, lengths_B, defer=defer)
    skip = (src_slots_BxN < 0) | (dst_slots_BxN < 0)
    dst = jnp.where(skip, self.size, dst_slots_BxN).astype(jnp.int32)
    b_Bx1 = jnp.arange(src_slots_BxN.shape[0])[:, None]
    src = jnp.clip(src_slots_BxN, 0, self.size - 1).astype(jnp.int32)
    positions = self.positions.at[b_Bx1, dst].set(self.positions[b_Bx1, src], mode='drop')
    if defer:
      out = self.replace(positions=positions, moves=Moves(src_BxN=src, dst_BxN=dst))
    else:
      layers = tuple(layer.gather(src, dst) for layer in self.layers)
      out = self.replace(layers=layers, positions=positions)
    if lengths_B is not None:
      out = out.replace(lengths=jnp.asarray(lengths_B, jnp.int32))
    return out

  def logical_axes(self) -> 'Cache':
    """Same structure, leaves are PartitionSpecs of logical axis names (for sharding)."""
    return Cache(layers=tuple(layer.logical_axes() for layer in self.layers),
                 positions=P('batch', 'cache_seq'), lengths=P('batch'),
                 moves=None if self.moves is None else MOVES_AXES)
