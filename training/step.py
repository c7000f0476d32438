"""The pure train and eval steps, jitted with shardings; the train step donates the state."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from training import objectives
from training import optimizer
from training.train_state import TrainState


def _microbatches(batch: dict[str, jax.Array], n: int) -> dict[str, jax.Array]:
  def split(x):
    if x.shape[0] % n:
      raise ValueError(f'Batch of {x.shape[0]} rows is not divisible by grad_accum={n}.')
    return x.reshape(n, x.shape[0] // n, *x.shape[1:])
  return jax.tree.map(split, batch)


def _value_and_grad(loss_fn: objectives.LossFn) -> Callable:
  """`jax.value_and_grad(loss_fn, has_aux=True)` over the params, whose integer leaves (constants
  of the run, see training.optimizer) get zero gradients of their own dtype."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True, allow_int=True)

  def f(params, batch, rng):
    out, grads = grad_fn(params, batch, rng)
    grads = jax.tree.map(lambda g, p: g if optimizer.is_trainable(p) else jnp.zeros_like(p),
                         grads, params)
    return out, grads
  return f


def train_step(state: TrainState, batch: dict[str, jax.Array], *, loss_fn: objectives.LossFn,
               tx: optax.GradientTransformation, grad_accum: int, seed: int
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update from `grad_accum` microbatches.

  A non-finite loss or gradient leaves the state unchanged and reports `finite = 0`, so the
  caller can stop with the last good state (and checkpoint) intact.
  """
  rng = jax.random.fold_in(jax.random.key(seed), state.step)
  grad_fn = _value_and_grad(loss_fn)
  if grad_accum == 1:
    (_, metrics), grads = grad_fn(state.params, batch, rng)
  else:
    def body(carry, xs):
      i, mb = xs
      (_, m), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (g, m)), None
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    mb = _microbatches(batch, grad_accum)
    first = jax.tree.map(lambda x: x[0], mb)
    zero_metrics = jax.tree.map(jnp.zeros_like, jax.eval_shape(
        lambda: grad_fn(state.params, first, rng)[0][1]))
    (grads, metrics), _ = jax.lax.scan(body, (zeros, zero_metrics),
                                       (jnp.arange(grad_accum), mb))
    grads = jax.tree.map(lambda g: g / grad_accum if optimizer.is_trainable(g) else g, grads)
    metrics = {k: v if k.endswith('_sum') else v / grad_accum for k, v in metrics.items()}
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(grad_norm)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                   opt_state=opt_state)
  state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
  return state, dict(metrics, grad_norm=grad_norm, finite=finite.astype(jnp.float32))


def jit_train_step(loss_fn: objectives.LossFn, tx: optax.GradientTransformation, *,
                   grad_accum: int, seed: int, state_shardings: TrainState) -> Callable:
  """The jitted step; batches arrive as global arrays already split over the batch axes."""
  step = lambda state, batch: train_step(state, batch, loss_fn=loss_fn, tx=tx,
                                         grad_accum=grad_accum, seed=seed)
  return jax.jit(step, in_shardings=(state_shardings, None),
                 out_shardings=(state_shardings, None), donate_argnums=(0,))


def jit_eval_step(loss_fn: objectives.LossFn, *, param_shardings: Any, seed: int) -> Callable:
  def step(params, batch):
    return loss_fn(params, batch, jax.random.key(seed))[1]
  return jax.jit(step, in_shardings=(param_shardings, None))
