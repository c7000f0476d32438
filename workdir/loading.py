"""Load a trained model from a workdir: the model, its params (restored into shardings) and
its tokenizer and its kind (`models.kind.ModelKind`, what decoders check). What sample.py,
benchmarks and drafters use: `load_model(workdir)`."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import data as data_lib
from models import config as config_lib
from models import kind as kind_model_lib
from models import sharding as sharding_lib
from models import transformer as transformer_lib
from workdir import checkpoint as checkpoint_lib
from workdir import kind as kind_lib


@dataclasses.dataclass
class LoadedModel:
  """A restored run: `params` are the Transformer's, `extras` the objective's other trees
  (heads, adapters...; replicated), keyed as in training."""
  model: transformer_lib.Transformer
  params: Any
  extras: dict[str, Any]
  tokenizer: data_lib.Tokenizer
  step: int
  config: dict[str, Any]  # the run's full config (config.json)
  workdir: str
  kind: kind_model_lib.ModelKind = kind_model_lib.ModelKind()  # recorded or derived (kind.py)

  @property
  def model_config(self) -> config_lib.ModelConfig:
    return self.model.cfg


def require_same_model(model_cfg: config_lib.ModelConfig, loaded: LoadedModel, setting: str,
                       hint: str = '') -> None:
  """ValueError unless `loaded`'s model config equals `model_cfg`: names the config setting
  that pointed at the run (e.g. 'diffusion.init_from=DIR') and every field that differs."""
  mine, theirs = model_cfg.to_dict(), loaded.model.cfg.to_dict()
  differ = sorted(k for k in mine if mine[k] != theirs.get(k))
  if differ:
    raise ValueError(f'{setting} holds a different model: '
                     + ', '.join(f'{k}={theirs.get(k)!r} (config: {mine[k]!r})' for k in differ)
                     + (f'. {hint}' if hint else ''))


def load_model(workdir: str, *, step: int | None = None, mesh: Mesh | None = None,
               rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES,
               dtype: str | None = None) -> LoadedModel:
  """Restores params (no optimizer state) of the newest readable checkpoint, or of `step`.

  With a mesh the params are restored straight into their shardings; otherwise onto the
  default device. `dtype` ('bfloat16', 'float32') sets the model's compute dtype and casts the
  parameters (inference: bf16 weights halve the bytes each decode step reads). Raises
  CheckpointError with a clear message when the workdir has no config, tokenizer or readable
  checkpoint.
  """
  workdir = os.path.abspath(workdir)
  config = checkpoint_lib.read_config(workdir)
  tok_dir = os.path.join(workdir, checkpoint_lib.TOKENIZER_DIR)
  if not os.path.isdir(tok_dir):
    raise checkpoint_lib.CheckpointError(f'{workdir} has no tokenizer/ directory.')
  tokenizer = data_lib.load_tokenizer(tok_dir)
  ckpt = checkpoint_lib.Checkpointer(workdir, read_only=True, async_save=False)
  if ckpt.latest_step() is None:
    raise checkpoint_lib.CheckpointError(
        f'No checkpoint in {workdir}: training wrote none yet (checkpoints/ is empty).')
  holder: dict[str, Any] = {}

  def abstract_fn(meta, candidate):
    model = transformer_lib.Transformer(config_lib.ModelConfig.from_dict(meta['model']))
    shapes = {'model': jax.eval_shape(functools.partial(transformer_lib.init_params, model),
                                      jax.random.key(0))}
    saved = ckpt.params_metadata(candidate)
    for name in saved:
      if name != 'model':
        shapes[name] = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
                                    saved[name])
    replicated = NamedSharding(mesh or Mesh(jax.devices()[:1], ('d',)), P())
    shardings = jax.tree.map(lambda _: replicated, shapes)
    if mesh is not None:
      shardings['model'] = sharding_lib.tree_shardings(transformer_lib.logical_axes(model),
                                                       shapes['model'], mesh, rules)
    holder['model'] = model
    return (jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                         shapes, shardings), None)

  try:
    restored_step, params, _, _, meta = ckpt.restore(abstract_fn, step=step)
  finally:
    ckpt.close()
  extras = {k: v for k, v in params.items() if k != 'model'}
  model = holder['model']
  if dtype is not None:
    cfg = dataclasses.replace(model.cfg, dtype=dtype, param_dtype=dtype)
    model = transformer_lib.Transformer(cfg)
    cast = lambda tree: jax.tree.map(  # integer leaves (token ids) keep their dtype
        lambda x: x.astype(cfg.weight_dtype) if jnp.issubdtype(x.dtype, jnp.inexact) else x,
        tree)
    params = {'model': cast(params['model']), **{k: cast(v) for k, v in extras.items()}}
    extras = {k: v for k, v in params.items() if k != 'model'}
  return LoadedModel(model=model, params=params['model'], extras=extras,
                     tokenizer=tokenizer, step=restored_step, config=config, workdir=workdir,
                     kind=kind_lib.from_meta(meta, config, tokenizer))
