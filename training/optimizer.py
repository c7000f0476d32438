"""AdamW with linear warmup + cosine decay and global-norm clipping; frozen subtrees.

Integer leaves of the params (e.g. the token ids of an EAGLE draft's reduced vocabulary) are
constants: `training.step` gives them zero gradients of their own dtype and the optimizer
leaves them as they are (no moments, no weight decay).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(train: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup to `learning_rate`, cosine decay to `min_lr_ratio * learning_rate`."""
  warmup = max(int(train.warmup_steps), 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train.learning_rate, warmup_steps=warmup,
      decay_steps=max(int(train.steps), warmup + 1),
      end_value=train.learning_rate * train.min_lr_ratio)


def _decay_mask(params):
  """Weight decay on matrices only (not on norm scales, biases)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(train: ml_collections.ConfigDict,
                   frozen: Sequence[str] = ()) -> optax.GradientTransformation:
  """The optimizer; top-level param keys in `frozen` get zero updates and no moments."""
  tx = optax.chain(
      optax.clip_by_global_norm(train.grad_clip) if train.grad_clip > 0 else optax.identity(),
      optax.adamw(learning_rate_schedule(train), b1=train.b1, b2=train.b2, eps=train.eps,
                  weight_decay=train.weight_decay, mask=_decay_mask),
  )

  def labels(params):  # a prefix per top-level key, leaf by leaf where integers sit
    out = {}
    for k, sub in params.items():
      if k in frozen:
        out[k] = 'frozen'
      elif all(is_trainable(x) for x in jax.tree.leaves(sub)):
        out[k] = 'train'
      else:
        out[k] = jax.tree.map(lambda x: 'train' if is_trainable(x) else 'frozen', sub)
    return out
  part = optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)
  if frozen:
    return part
  # Nothing frozen: the plain transformation (the state runs without integer leaves have
  # always had), the partition only for params that hold integer leaves.
  pick = lambda tree: part if any(not is_trainable(x) for x in jax.tree.leaves(tree)) else tx
  return optax.GradientTransformation(
      lambda params: pick(params).init(params),
      lambda updates, state, params=None: pick(updates).update(updates, state, params))


def is_trainable(leaf) -> bool:
  """Floating-point leaves train; integer ones are constants of the run."""
  return jnp.issubdtype(leaf.dtype, jnp.inexact)
