"""A benchmark-only draft "model" with a set acceptance rate: the speed of the machinery.

  draft = OracleDraft.for_target(target.cfg)
  params['draft'] = oracle_params(reference_BxS, alpha=0.8)
  models = Models(target, extras=(('draft', draft),))
  registry.build('speculative', dict(draft_workdir='oracle', gamma=4))  # any tree shape

It knows the target's greedy continuation (`reference_BxS`: the token at every position of
each row, prompt and AR output, from one AR pass) and drafts it with a controlled error: at a
node holding the reference token of its position p, the best proposal is the reference token
at p + 1 with probability `alpha` (decided by a hash of the row, p + 1 and the node's token, so
every call agrees); otherwise, and at every node off the reference path, the proposals are
wrong tokens only. Lower-ranked proposals are always wrong (a tree's siblings never rescue a
miss), so each drafted depth is accepted with probability alpha, in a chain and along a tree's
best path alike. Run through the real draft-model drafter (chain, static and dynamic trees,
multi-draft) its forward costs nearly nothing, so the measured speedup over AR against the
ideal tau * t_AR / t_fwd(T) shows how cheaply the loop turns acceptance into tokens.
It is never a claim about a real drafter.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from models import ModelConfig
from models import transformer as transformer_lib

WRONG = 8  # wrong proposals ranked below the (possible) hit


def _uniform(salt_B: jax.Array, positions_BxT: jax.Array, tokens_BxT: jax.Array) -> jax.Array:
  """A uniform in [0, 1) per (row, position, token): an integer hash (no key derivation)."""
  h = (salt_B[:, None].astype(jnp.uint32) * jnp.uint32(0x9E3779B1)
       ^ positions_BxT.astype(jnp.uint32) * jnp.uint32(0x85EBCA77)
       ^ tokens_BxT.astype(jnp.uint32) * jnp.uint32(0xC2B2AE3D))
  for mult in (0x2C1B3C6D, 0x297A2D39):
    h = (h ^ (h >> 15)) * jnp.uint32(mult)
  h = h ^ (h >> 16)
  return (h >> 8).astype(jnp.float32) * (1.0 / (1 << 24))


@dataclasses.dataclass(frozen=True)
class OracleDraft:
  """Same call signature as a `Transformer` (see module docstring); `cfg` only sizes its
  (one tiny layer) cache, which keeps the drafter's slot bookkeeping as for a real draft."""
  cfg: ModelConfig

  @classmethod
  def for_target(cls, target_cfg: ModelConfig) -> 'OracleDraft':
    return cls(dataclasses.replace(target_cfg, num_layers=1, layer_types=(), num_heads=1,
                                   num_kv_heads=1, head_dim=2, d_model=8, mlp_dim=8))

  def apply(self, variables, tokens_BxT, positions_BxT=None, cache=None, write_slots_BxT=None,
            attn_mask=None, **unused):
    with jax.named_scope('OracleDraft'):  # its ops named as a draft module's (step_ops)
      return self._apply(variables, tokens_BxT, positions_BxT, cache, write_slots_BxT,
                         attn_mask, **unused)

  def _apply(self, variables, tokens_BxT, positions_BxT, cache, write_slots_BxT, attn_mask,
             **unused):
    del attn_mask, unused
    p = variables['params']
    ref_BxS, alpha, salt_B = p['reference'], p['alpha'], p['salt']
    B, T = tokens_BxT.shape
    S, V = ref_BxS.shape[1], self.cfg.vocab_size
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    positions_BxT = positions_BxT.astype(jnp.int32)
    at = lambda pos: jnp.take_along_axis(ref_BxS, jnp.clip(pos, 0, S - 1), axis=1)
    on_path = (positions_BxT >= 0) & (tokens_BxT == at(positions_BxT))
    right_BxT = at(positions_BxT + 1)
    hit = (on_path & (right_BxT >= 0) & (positions_BxT + 1 < S)
           & (_uniform(salt_B, positions_BxT + 1, tokens_BxT) < alpha))
    right_BxT = jnp.maximum(right_BxT, 0)
    # Wrong proposals: the WRONG tokens after the right one (mod V), decreasing scores.
    v_1x1xV = jnp.arange(V)[None, None]
    offset = (v_1x1xV - right_BxT[..., None]) % V  # 0 = the right token
    logits = jnp.where((offset >= 1) & (offset <= WRONG), 4.0 - 0.25 * offset, -8.0)
    logits = jnp.where(offset == 0, jnp.where(hit, 12.0, -16.0)[..., None], logits)
    new_cache = None
    if cache is not None:
      if write_slots_BxT is None:
        write_slots_BxT = positions_BxT
      slots_BxT, key_pos_BxS, _ = cache.begin_write(positions_BxT, write_slots_BxT)
      # Its keys and values are never written or read: moves owed to them (a tree path, see
      # Cache.gather(defer=True)) are left unmade, as a real draft makes them in its write.
      new_cache = cache.replace(moves=None).end_write(cache.layers, key_pos_BxS, slots_BxT)
    h = jnp.zeros((B, T, self.cfg.d_model), jnp.float32)
    return transformer_lib.ModelOutput(logits_BxTxV=logits.astype(jnp.float32),
                                       cache=new_cache, hidden=None, last_hidden_BxTxD=h)


def reference_rows(prompt_BxP: Any, prompt_len_B: Any, generated_BxN: Any,
                   num_generated_B: Any, size: int) -> np.ndarray:
  """[B, size] int32: each row's tokens by position (prompt, then its AR output), -1 after."""
  prompt_BxP, generated_BxN = np.asarray(prompt_BxP), np.asarray(generated_BxN)
  out = np.full((prompt_BxP.shape[0], size), -1, np.int32)
  for b in range(prompt_BxP.shape[0]):
    n_p, n_g = int(prompt_len_B[b]), int(num_generated_B[b])
    row = list(prompt_BxP[b, :n_p]) + list(generated_BxN[b, :n_g])
    out[b, :min(len(row), size)] = row[:size]
  return out


def oracle_params(reference_BxS: Any, alpha: float, salt_B: Any | None = None
                  ) -> dict[str, jax.Array]:
  """The oracle's 'weights': the reference rows, the acceptance rate, a salt per row."""
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f'alpha must be in [0, 1], got {alpha}.')
  ref = jnp.asarray(reference_BxS, jnp.int32)
  if salt_B is None:
    salt_B = np.arange(ref.shape[0])
  return {'reference': ref, 'alpha': jnp.float32(alpha), 'salt': jnp.asarray(salt_B, jnp.int32)}
