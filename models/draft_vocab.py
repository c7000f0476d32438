"""Reduced draft vocabularies (EAGLE-3's d2t/t2d): a drafter that scores only the Vd most
frequent target tokens of its training data.

A drafter trained with one keeps its token ids in its params as `params['hot_ids']` (int32
[Vd], ascending, distinct, valid target ids; never trained: integer leaves are constants of a
run, see training.optimizer). It reads only those rows of the output head (`head_rows`), so a
draft call reads Vd x D of head instead of V x D, the largest part of a draft step on a
large vocabulary; entry i of its logits stands for target token hot_ids[i] (`to_target`).
Tokens outside the set are never drafted; the target verifies every token, so decoding stays
lossless.

Drafters that are not trained for a set take one at decode time, FR-Spec's frequency-ranked
draft vocabulary (Zhao et al. 2025): a draft model's or an early exit's whole head, restricted
to the N most frequent tokens of the target run's training data (`draft_vocab=N`, a decoder
setting). Their ids travel as `params[RUN_KEY][size_key(N)]` (the workbench counts them,
`workbench.Workbench.draft_vocabulary`); the drafter scores the rows with `head_logits` and
spreads the scores back over the whole vocabulary (`expand`, NEVER_LOGIT elsewhere), so its
picks are target ids and its q, where it samples, is a distribution over the target's
vocabulary that is zero outside the set (the verifier's rule stays exact).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from models.layers import NEVER_LOGIT

HOT_IDS = 'hot_ids'
RUN_KEY = 'draft_vocab'  # params entry of decode-time sets: {size_key(N): ids [N]}


def check(hot_ids: Any, vocab_size: int) -> np.ndarray:
  """`hot_ids` as int32 numpy [Vd], or ValueError unless they are distinct token ids in
  [0, vocab_size) (the target's valid ids), ascending, at least one and fewer than vocab_size
  (a draft over the whole vocabulary stores none)."""
  ids = np.asarray(hot_ids)
  if ids.ndim != 1 or not 0 < len(ids) < vocab_size:
    raise ValueError(f'A reduced draft vocabulary needs between 1 and {vocab_size - 1} token '
                     f'ids (the target has {vocab_size}), got shape {ids.shape}.')
  if not np.issubdtype(ids.dtype, np.integer) and not np.all(ids == np.round(ids)):
    raise ValueError('Draft vocabulary ids must be integers, got '
                     f'{ids.dtype} values such as {ids[ids != np.round(ids)][:3]}.')
  ids = ids.astype(np.int64)
  if ids.min() < 0 or ids.max() >= vocab_size or np.any(np.diff(ids) <= 0):
    raise ValueError(f'Draft vocabulary ids must be ascending, distinct and in [0, {vocab_size})'
                     f'; got min {ids.min()}, max {ids.max()}, '
                     f'{int(np.sum(np.diff(ids) <= 0))} out of order or repeated.')
  return ids.astype(np.int32)


def with_ids(params: Any, hot_ids: Any, vocab_size: int) -> Any:
  """`params` (a dict) with the checked ids stored; unchanged for None (whole vocabulary)."""
  if hot_ids is None:
    return params
  return {**params, HOT_IDS: jnp.asarray(check(hot_ids, vocab_size), jnp.int32)}


def ids(params: Any) -> jax.Array | None:
  """[Vd] int32 target ids of a drafter's reduced vocabulary, or None (whole vocabulary)."""
  return params.get(HOT_IDS)


def without(params: Any) -> Any:
  """The drafter's params without its vocabulary ids (what its flax module holds)."""
  return {k: v for k, v in params.items() if k != HOT_IDS}


def check_params(params: Any, name: str, rows: int | None = None) -> None:
  """Clear errors (at trace time) for ids cast to floats with the weights, and for a head
  correction of `rows` rows that does not match the ids."""
  hot = ids(params)
  if hot is None:
    return
  if not jnp.issubdtype(hot.dtype, jnp.integer):
    raise ValueError(f'The {name} draft\'s vocabulary ids are {hot.dtype}, not integers: '
                     'were they cast with the weights?')
  if rows is not None and rows != hot.shape[0]:
    raise ValueError(f'The {name} draft\'s head correction has {rows} rows but its vocabulary '
                     f'{hot.shape[0]} ids.')


def head_rows(params: Any, out_emb_VxD: jax.Array) -> jax.Array:
  """[Vd, D] the rows of the output head the drafter scores ([V, D] without a reduced
  vocabulary)."""
  hot = ids(params)
  return out_emb_VxD if hot is None else jnp.take(out_emb_VxD, hot, axis=0)


def to_target(params: Any, draft_ids: jax.Array) -> jax.Array:
  """Target token ids of the drafter's vocabulary entries `draft_ids` (any shape)."""
  hot = ids(params)
  return draft_ids if hot is None else jnp.take(hot, draft_ids, axis=0)


def top_ids(counts_V: Any, count: int) -> np.ndarray:
  """[count] int32, ascending: the ids of the `count` largest entries of `counts_V` (ties to
  the lower id): a draft vocabulary from token counts (`data.token_counts`), as EAGLE-3 builds
  one from its training data."""
  counts_V = np.asarray(counts_V)
  if not 0 < count <= len(counts_V):
    raise ValueError(f'A draft vocabulary of {count} tokens from counts over {len(counts_V)}.')
  order = np.lexsort((np.arange(len(counts_V)), -counts_V))  # most frequent first, lower id
  return np.sort(order[:count]).astype(np.int32)


def size_key(count: int) -> str:
  """The key of a decode-time set of `count` tokens in params[RUN_KEY]."""
  return str(int(count))


def run_ids(params: Any, count: int, who: str) -> jax.Array:
  """[count] int32 ids of the decode-time draft vocabulary of `count` tokens (params[RUN_KEY]),
  or a ValueError that says where they come from."""
  sets = params.get(RUN_KEY) or {}
  hot = sets.get(size_key(count))
  if hot is None:
    raise ValueError(
        f'{who}: draft_vocab={count} needs the {count} most frequent tokens of the target\'s '
        f'training data as params[{RUN_KEY!r}][{size_key(count)!r}] (sample.py and the '
        'workbench count them from the target run; have sizes '
        f'{sorted(sets, key=int) if sets else "none"}).')
  if hot.ndim != 1 or hot.shape[0] != count or not jnp.issubdtype(hot.dtype, jnp.integer):
    raise ValueError(f'{who}: params[{RUN_KEY!r}][{size_key(count)!r}] must be {count} integer '
                     f'ids, got {hot.dtype} {hot.shape}.')
  return hot


def run_head_rows(params: Any, count: int, out_emb_VxD: jax.Array, who: str) -> jax.Array:
  """[count, D] rows of the output head `out_emb_VxD` for the decode-time set of `count`
  tokens (`run_ids`): what a draft model or an early exit scores, gathered once per
  generation."""
  return jnp.take(out_emb_VxD, run_ids(params, count, who), axis=0)


def at_decode_time(params: Any, key: str, count: int, who: str,
                   row_leaves: tuple[str, ...] = ()) -> Any:
  """`params` with params[key] (a drafter trained over the whole vocabulary: EAGLE, Medusa,
  MTP) given the decode-time set of `count` tokens as its `hot_ids` (`run_ids`), and its
  `row_leaves` ([V, ...] per-token leaves such as EAGLE's head correction) cut to those rows;
  unchanged for count 0. ValueError for a drafter trained with a set of its own."""
  if not count:
    return params
  p = params[key]
  if ids(p) is not None:
    raise ValueError(f'{who} was trained over a draft vocabulary of {ids(p).shape[0]} tokens '
                     f'(spec.draft_vocab); draft_vocab={count} is for drafters trained over '
                     'the whole vocabulary. Leave it at 0.')
  hot = run_ids(params, count, who)
  q = {**p, HOT_IDS: hot}
  for leaf in row_leaves:
    if leaf in p:
      q[leaf] = jnp.take(p[leaf], hot, axis=0)
  return {**params, key: q}


def expand(logits_xVd: jax.Array, hot_Vd: jax.Array, vocab_size: int) -> jax.Array:
  """[..., vocab_size] float32: entry hot[i] = logits[..., i], every other id NEVER_LOGIT (a
  reduced draft's scores over the target's vocabulary)."""
  full = jnp.full(logits_xVd.shape[:-1] + (vocab_size,), NEVER_LOGIT, jnp.float32)
  return full.at[..., hot_Vd].set(logits_xVd.astype(jnp.float32))


def target_index(hot_ids: jax.Array, vocab_size: int) -> jax.Array:
  """[V] int32: each target id's entry in the draft vocabulary, -1 for ids outside it."""
  return jnp.full((vocab_size,), -1, jnp.int32).at[hot_ids].set(
      jnp.arange(hot_ids.shape[0], dtype=jnp.int32))
