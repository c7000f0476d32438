"""Turning a draft's logits into children: top-k, i.i.d. samples, Gumbel-top-k, SBS values.

The same `SamplingConfig` that makes the target's p makes the draft's q here, and the rule
that drew the children decides the verification rule:

  deterministic   top-k of the raw draft logits (EAGLE; greedy drafts)  -> 'deterministic'
  iid / kseq      k i.i.d. samples from q (inverse CDF, one uniform each) -> 'iid' / 'kseq'
                  (how = 'traversal' draws the same way)                   / 'traversal'
  wor             k samples without replacement (Gumbel-top-k on log q)  -> 'wor'

Under greedy sampling every drafter uses top-k (q is one-hot there).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from decoding import sampling as sampling_lib
import pallas_kernels.common as kernel_common


def _gumbel(keys_BxN: jax.Array, V: int) -> jax.Array:
  """[B, N, V] standard Gumbel noise from one key per (row, node), via
  `sampling.uniform_from_bits`."""
  bits = jax.vmap(jax.vmap(lambda k: jax.random.bits(k, (V,), jnp.uint32)))(keys_BxN)
  return -jnp.log(-jnp.log(sampling_lib.uniform_from_bits(bits)))


def _inverse_cdf(logq_BxNxV: jax.Array, keys_BxNxK: jax.Array) -> jax.Array:
  """[B, N, K] int32: K i.i.d. draws from each node's q, one uniform u per draw: the first
  token whose cumulative mass reaches u times the total.

  One random number per draw rather than V (an exponential race needs V Gumbels per draw:
  on XLA:CPU generating them was most of a sampled multi-draft step outside the models,
  benchmarks/results/step_cost_tiny_sampled.md). u lies strictly inside (0, 1)
  (`sampling.uniform_from_bits`), so a token of zero mass is never drawn.
  """
  q = jnp.exp(logq_BxNxV)
  cdf = jnp.cumsum(q, axis=-1)
  bits = jax.vmap(jax.vmap(jax.vmap(lambda k: jax.random.bits(k, (), jnp.uint32))))(
      keys_BxNxK)
  u = sampling_lib.uniform_from_bits(bits) * cdf[..., -1:]  # [B, N, K]
  below = cdf[:, :, None, :] < u[..., None]  # [B, N, K, V]
  V = logq_BxNxV.shape[-1]
  return jnp.minimum(jnp.sum(below, axis=-1), V - 1).astype(jnp.int32)


def top_log_probs(logits: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """([..., k] log-softmax values, [..., k] int32 ids) of the k highest logits (ties: lowest
  id): `top_k(log_softmax(logits), k)` with the same arithmetic as `jax.nn.log_softmax`, but
  normalising only the k chosen values. A chain's drafting never reads the scores, and XLA
  then drops the normalisation from the step."""
  logits = logits.astype(jnp.float32)
  top, tok = kernel_common.top_k(logits, k)
  shift = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  score = (top - shift) - jnp.log(jnp.sum(jnp.exp(logits - shift), axis=-1, keepdims=True))
  return score, tok.astype(jnp.int32)


def node_keys(keys_B: jax.Array, n: int, offset: int = 0) -> jax.Array:
  """[B, n] keys: fold_in(key_b, offset + i) (one independent stream per tree node)."""
  idx = jnp.arange(offset, offset + n, dtype=jnp.uint32)
  return jax.vmap(lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(idx))(keys_B)


def children(logits_BxNxV: jax.Array, k: int, how: str, sampling: sampling_lib.SamplingConfig,
             keys_BxN: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array | None,
                                                  jax.Array]:
  """k proposals per node.

  Returns:
    tokens_BxNxK, valid_BxNxK (a sampled proposal outside q's support is invalid),
    logq_BxNxV (None for deterministic proposals),
    score_BxNxK: log-probability of each proposal for ranking trees (log_softmax of the raw
      logits for deterministic proposals; for 'wor', the Gumbel-perturbed log q).
  """
  logits = logits_BxNxV.astype(jnp.float32)
  B, N, V = logits.shape
  if how == 'deterministic' or sampling.greedy:
    score, tok = top_log_probs(logits, k)
    return tok, jnp.ones((B, N, k), bool), None, score
  if keys_BxN is None:
    raise ValueError(f'Sampled proposals ({how!r}) need random keys.')
  logq = sampling_lib.log_probs(logits, sampling)
  if how in ('iid', 'kseq', 'traversal'):
    tok = _inverse_cdf(logq, jax.vmap(jax.vmap(lambda kk: jax.random.split(kk, k)))(keys_BxN))
    score = jnp.take_along_axis(logq, tok, axis=-1)
    return tok, jnp.isfinite(score), logq, score
  if how == 'wor':
    pert = logq + _gumbel(keys_BxN, V)
    score, tok = kernel_common.top_k(pert, k)
    return tok.astype(jnp.int32), jnp.isfinite(score), logq, score
  raise ValueError(f'Unknown proposal rule {how!r}.')


def sbs_values(parent_value_BxN: jax.Array, parent_logq_BxN: jax.Array,
               perturbed_BxNxK: jax.Array) -> jax.Array:
  """Stochastic-beam-search values of Gumbel-top-k children (RSD-S).

  A child y of a node with path log-probability phi_parent gets the perturbed value
  G~ = phi_parent + log q(y) + g_y (g i.i.d. Gumbel); conditioning on max_y G~ = G_parent gives
  G = -logaddexp(-G_parent, -G~ + log(1 - exp(G~ - Z))) with Z = max_y G~: below the parent's
  value, equal for the best child, increasing in G~. Siblings keep their without-replacement
  order, subtrees never exceed their root (kept node sets stay connected), and the value of
  the next sibling is independent of its identity given the earlier ones (Gumbel-max), which
  is what keeps value-based pruning exact under the 'wor' rule.
  `perturbed_BxNxK` = log q + g of the children, in decreasing order (so Z is entry 0).
  """
  gap = jnp.minimum(perturbed_BxNxK - perturbed_BxNxK[..., :1], 0.0)
  log1m = jnp.where(gap < 0, jnp.log(-jnp.expm1(jnp.where(gap < 0, gap, -1.0))), -jnp.inf)
  inner = -(parent_logq_BxN[..., None] + perturbed_BxNxK) + log1m
  out = -jnp.logaddexp(-parent_value_BxN[..., None], inner)
  return jnp.where(jnp.isfinite(perturbed_BxNxK), out, -jnp.inf)
