"""The objective registry: `make_objective(name, model, config) -> Objective`.

An objective says what is trained and how:

  loss_fn(params, batch, rng) -> (scalar loss, metrics)   params = {'model': ..., **extras}
  init_extras(rng) -> {name: tree}        extra trainable trees (heads, adapters, routers)
  extra_logical_axes() -> {name: tree}    their logical axes (PartitionSpec leaves), optional
  frozen: top-level keys of params that get no updates (e.g. ('model',) for a frozen base)
  make_train_iterator / make_eval_batches  its own data (synthetic tasks); default: packed LM
  eval_fn                                  metrics on eval batches; default: loss_fn's metrics
  init_model_params() -> model params      start a fresh run from them (e.g. an AR checkpoint)
  kind                                     the `models.kind.ModelKind` it trains (attention, mask,
                                           shift, blocks, any-order); written into every
                                           checkpoint with the extras as `heads`

Metrics named `*_sum` are summed over evaluation batches, the rest averaged. When the eval
metrics contain `nll_sum` and the batches hold `tokens`, bits per byte are reported too.
A factory may return a bare loss function; it is wrapped into an Objective.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

import registry as registry_lib
from models import kind as kind_lib
from models import transformer as transformer_lib
from workdir import loading

Batch = dict[str, jax.Array]
LossFn = Callable[[Any, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass
class Objective:
  """What a training run optimises; see the module docstring."""
  loss_fn: LossFn
  init_extras: Callable[[jax.Array], dict[str, Any]] | None = None
  extra_logical_axes: Callable[[], dict[str, Any]] | None = None
  frozen: tuple[str, ...] = ()
  make_train_iterator: Callable[..., Any] | None = None
  make_eval_batches: Callable[..., list[Batch]] | None = None
  eval_fn: LossFn | None = None
  init_model_params: Callable[[], Any] | None = None  # start from these model params (fresh runs)
  kind: kind_lib.ModelKind = kind_lib.ModelKind()  # what decoders read; default causal AR

  def extras(self, rng: jax.Array) -> dict[str, Any]:
    return dict(self.init_extras(rng)) if self.init_extras else {}


ObjectiveFactory = Callable[[transformer_lib.Transformer, ml_collections.ConfigDict],
                            'Objective | LossFn']

# The modules that register objectives are imported by `training/objectives/__init__.py`.
OBJECTIVES: registry_lib.Registry[ObjectiveFactory] = registry_lib.Registry('objective')


def register(name: str) -> Callable[[ObjectiveFactory], ObjectiveFactory]:
  """Decorator: registers an objective factory under `name`."""
  return OBJECTIVES.register(name)


def names() -> list[str]:
  return OBJECTIVES.names()


def make_objective(name: str, model: transformer_lib.Transformer,
                   config: ml_collections.ConfigDict | None) -> Objective:
  out = OBJECTIVES.get(name)(model, config)
  return out if isinstance(out, Objective) else Objective(loss_fn=out)


def token_cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array,
                        weights_BxT: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted mean next-token cross-entropy (float32) plus summed statistics."""
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  nll_BxT = -jnp.take_along_axis(logp_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  weights_BxT = weights_BxT.astype(jnp.float32)
  count = jnp.maximum(weights_BxT.sum(), 1.0)
  loss = (nll_BxT * weights_BxT).sum() / count
  correct = (jnp.argmax(logits_BxTxV, -1) == targets_BxT) * weights_BxT
  return loss, {'loss': loss, 'accuracy': correct.sum() / count,
                'nll_sum': (nll_BxT * weights_BxT).sum(), 'tokens_sum': weights_BxT.sum()}


def read_section(config: ml_collections.ConfigDict | None, name: str, cls: type) -> Any:
  """Config section `name` as the frozen dataclass `cls` (its defaults where the section or a
  key is missing); ValueError naming the keys `cls` does not know."""
  d = dict(config[name].to_dict()) if config is not None and name in config else {}
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - known)
  if unknown:
    raise ValueError(f'Unknown {name} config keys {unknown}; known: {sorted(known)}.')
  return cls(**d)


def params_from_run(model: transformer_lib.Transformer, workdir: str, setting: str
                    ) -> Callable[[], Any]:
  """`Objective.init_model_params` that starts from the model params of run `workdir` (the
  config key naming it: `setting`), refusing a run of another model."""
  def init():
    loaded = loading.load_model(workdir)
    loading.require_same_model(model.cfg, loaded, f'{setting}={workdir}')
    return loaded.params
  return init
