"""The train state and its sharded creation."""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from models import sharding as sharding_lib
from models import transformer as transformer_lib


@flax.struct.dataclass
class TrainState:
  """step: int32 scalar (optimizer updates applied); params (fp32); opt_state."""
  step: jax.Array
  params: Any
  opt_state: Any


def param_shardings(model: transformer_lib.Transformer, mesh: Mesh,
                    rules: sharding_lib.Rules) -> Any:
  """NamedShardings of the parameters, from their logical axis names and the rules."""
  abstract = jax.eval_shape(functools.partial(transformer_lib.init_params, model),
                            jax.random.key(0))
  return sharding_lib.tree_shardings(transformer_lib.logical_axes(model), abstract, mesh, rules)


def state_shardings(model: transformer_lib.Transformer, tx: optax.GradientTransformation,
                    mesh: Mesh, rules: sharding_lib.Rules) -> TrainState:
  """Shardings of a TrainState: optimizer moments follow their parameters."""
  p_shard = param_shardings(model, mesh, rules)
  replicated = NamedSharding(mesh, P())
  abstract_params = jax.eval_shape(functools.partial(transformer_lib.init_params, model),
                                   jax.random.key(0))
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_shard = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, p_shard,
                                    transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, params=p_shard, opt_state=opt_shard)


def create_train_state(model: transformer_lib.Transformer, tx: optax.GradientTransformation,
                       rng: jax.Array, shardings: TrainState) -> TrainState:
  """Initialises params and optimizer state directly into their shardings."""
  def init(rng):
    params = transformer_lib.init_params(model, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  return jax.jit(init, out_shardings=shardings)(rng)


def abstract_state(model: transformer_lib.Transformer, tx: optax.GradientTransformation,
                   shardings: TrainState) -> TrainState:
  """ShapeDtypeStructs with shardings: the restore target for checkpoints."""
  def init(rng):
    params = transformer_lib.init_params(model, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  shapes = jax.eval_shape(init, jax.random.key(0))
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)
