"""The train state and its sharded creation.

params = {'model': Transformer params, **objective extras}; the model part is sharded by its
logical axes and the rules, extras by the objective's logical axes (replicated if it gives
none); optimizer moments follow their parameters.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax  # noqa: F401  (types)
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from models import sharding as sharding_lib
from models import transformer as transformer_lib
from training.objectives import registry as objectives


@flax.struct.dataclass
class TrainState:
  """step: int32 scalar (optimizer updates applied); params (fp32); opt_state."""
  step: jax.Array
  params: Any
  opt_state: Any


def init_params(model: transformer_lib.Transformer, objective: objectives.Objective,
                rng: jax.Array) -> dict[str, Any]:
  model_rng, extra_rng = jax.random.split(rng)
  return {'model': transformer_lib.init_params(model, model_rng), **objective.extras(extra_rng)}


def param_shardings(model: transformer_lib.Transformer, objective: objectives.Objective,
                    mesh: Mesh, rules: sharding_lib.Rules) -> dict[str, Any]:
  """NamedShardings of the params dict from logical axis names and the rules."""
  shapes = jax.eval_shape(functools.partial(init_params, model, objective), jax.random.key(0))
  logical = {'model': transformer_lib.logical_axes(model)}
  given = objective.extra_logical_axes() if objective.extra_logical_axes else {}
  for name, tree in shapes.items():
    if name != 'model':
      logical[name] = given.get(name, jax.tree.map(lambda x: P(), tree))
  return sharding_lib.tree_shardings(logical, shapes, mesh, rules)


def state_shardings(model: transformer_lib.Transformer, objective: objectives.Objective,
                    tx: optax.GradientTransformation, mesh: Mesh,
                    rules: sharding_lib.Rules) -> TrainState:
  """Shardings of a TrainState: optimizer moments follow their parameters."""
  p_shard = param_shardings(model, objective, mesh, rules)
  replicated = NamedSharding(mesh, P())
  shapes = jax.eval_shape(functools.partial(init_params, model, objective), jax.random.key(0))
  abstract_opt = jax.eval_shape(tx.init, shapes)
  return TrainState(step=replicated, params=p_shard,
                    opt_state=_follow_params(abstract_opt, p_shard, replicated))


def _follow_params(opt_state: Any, param_shards: Any, default: NamedSharding) -> Any:
  """Shards each optimizer-state leaf like the parameter whose path it ends with.

  An optimizer leaf's path is (optimizer wrappers..., param dict keys...): the trailing run of
  dict keys names the parameter (e.g. (..., 'mu', 'model', 'layer_0', 'mlp', 'gate')).
  Leaves that end with no parameter path (counts, scalars) are replicated.
  """
  by_path = {tuple(k.key for k in path): sh for path, sh in
             jax.tree_util.tree_flatten_with_path(param_shards)[0]}

  def pick(path, leaf):
    keys = []
    for k in reversed(path):
      if not isinstance(k, jax.tree_util.DictKey):
        break
      keys.insert(0, k.key)
    for start in range(len(keys)):
      sh = by_path.get(tuple(keys[start:]))
      if sh is not None and len(sh.spec) <= len(getattr(leaf, 'shape', ())):
        return sh
    return default

  return jax.tree_util.tree_map_with_path(pick, opt_state)


def _init_state(model, objective, tx, rng):
  params = init_params(model, objective, rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def create_train_state(model: transformer_lib.Transformer, objective: objectives.Objective,
                       tx: optax.GradientTransformation, rng: jax.Array,
                       shardings: TrainState) -> TrainState:
  """Initialises params and optimizer state directly into their shardings."""
  return jax.jit(functools.partial(_init_state, model, objective, tx),
                 out_shardings=shardings)(rng)


def abstract_state(model: transformer_lib.Transformer, objective: objectives.Objective,
                   tx: optax.GradientTransformation, shardings: TrainState) -> TrainState:
  """ShapeDtypeStructs with shardings: the restore target for checkpoints."""
  shapes = jax.eval_shape(functools.partial(_init_state, model, objective, tx),
                          jax.random.key(0))
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)
