"""What a decoding step costs: the target's forward-cost curve, random-weight models of the
size presets, and stand-ins that make a model call (almost) free.

  model, params = random_model('mem')
  t = forward_time(model, params, batch=1, tokens=8)          # seconds per cached forward
  curve = forward_curve(model, params, batch=1, tokens=(1, 2, 4, 8))

A multi-token decoder pays off when a forward over T tokens costs little more than over one:
`forward_time` (`decoding/forward_timing.py`, where adaptive draft lengths measure their costs
too) measures one cached forward over T new tokens the way a decode loop runs it, so neither
Python dispatch nor dead-code elimination of unused logits hides or adds cost. `ideal_speedup` turns a decoder's tau into the speedup over AR that the
curve allows (the step costing exactly one target forward over its tokens).

`noop_models` swaps a decoder's models for `NoopModel`s of the same shapes, whose forward
only does the cache bookkeeping and returns cheap logits: timing a decoder that way leaves
everything else a step does (drafting logic, trees, masks, verification, cache commits,
bookkeeping), see benchmarks/step_cost.py. Drafters that live inside a decoder rather than
in its `Models` (Medusa heads, MTP modules, the Kangaroo adapter, the EAGLE and Chimera draft
layers) are made free the same way by `noop_draft_modules`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp

from configs import common as presets
from decoding import base
from decoding import forward_timing
from models import ModelConfig, Transformer, init_params
from models import chimera as chimera_lib
from models import eagle as eagle_lib
from models import heads as heads_lib
from models import transformer as transformer_lib

BYTE_VOCAB = 272  # the byte tokenizer's vocabulary (256 bytes + special tokens)


def preset_config(preset: str, dtype: str = 'float32', vocab_size: int | None = None,
                  attention_impl: str = 'auto') -> ModelConfig:
  """The model config of a size preset (byte vocabulary for test/tiny/mem, 32k BPE above)."""
  if preset not in presets.PRESETS:
    raise ValueError(f'Unknown preset {preset!r}; presets: {sorted(presets.PRESETS)}.')
  d = dict(presets.PRESETS[preset])
  if vocab_size is None:
    vocab_size = BYTE_VOCAB if preset in ('test', 'tiny', 'mem') else 32768
  d['max_seq_len'] = max(d['max_seq_len'], 4096)
  return ModelConfig(vocab_size=vocab_size, dtype=dtype, param_dtype=dtype,
                     attention_impl=attention_impl, **d)


def random_model(preset: str, dtype: str = 'float32', seed: int = 0,
                 vocab_size: int | None = None, attention_impl: str = 'auto',
                 embed_scale: float = 1.0) -> tuple[Transformer, Any]:
  """A `Transformer` of the preset with random weights (for speed work only).

  `embed_scale` multiplies the (tied) embedding table. At 1 the random blocks dominate the
  residual stream and the next-token logits are nearly flat, so a one-token and a T-token
  forward in bf16, which round differently, break near-ties apart and a greedy speculative
  decoder leaves AR's text. Large (e.g. 30), the input embedding dominates the residual
  stream and the tied head puts a wide margin on repeating the current token: the greedy
  text is degenerate (the last prompt token repeated), but AR and every verify forward agree
  in bf16 too. Speed does not depend on the values; the outputs-equal-AR check does.
  """
  if not embed_scale > 0:
    raise ValueError(f'embed_scale must be positive, got {embed_scale!r}.')
  cfg = preset_config(preset, dtype, vocab_size, attention_impl)
  model = Transformer(cfg)
  params = init_params(model, jax.random.key(seed))
  if embed_scale != 1.0:
    params = dict(params, embed=dict(params['embed'],
                                     embedding=params['embed']['embedding'] * embed_scale))
  params = jax.tree.map(lambda p: p.astype(cfg.weight_dtype), params)
  return model, params


def parse_value(value: str) -> Any:
  """A command-line option value: 'true'/'false' as bools, integers as ints, else the string."""
  low = value.lower()
  if low in ('true', 'false'):
    return low == 'true'
  return int(value) if value.lstrip('-').isdigit() else value


def with_fields(model: Transformer, fields: str) -> Transformer:
  """The model with `ModelConfig` fields set from 'FIELD=VALUE[,FIELD=VALUE...]' (e.g.
  'fused_projections=true'): the same weights, another config."""
  if not fields:
    return model
  updates = {}
  for pair in fields.split(','):
    key, sep, value = pair.partition('=')
    if not sep or not key:
      raise ValueError(f'Model fields {fields!r}: expected FIELD=VALUE, got {pair!r}.')
    updates[key.strip().removeprefix('model.')] = parse_value(value.strip())
  return with_config(model, updates)


def with_config(model: Transformer, updates: dict[str, Any]) -> Transformer:
  """The model with these `ModelConfig` fields replaced (unknown names refused by name; the
  config checks the values): the same weights, another config."""
  if not updates:
    return model
  known = {f.name for f in dataclasses.fields(model.cfg)}
  unknown = sorted(set(updates) - known)
  if unknown:
    raise ValueError(f'Unknown ModelConfig fields {unknown}; fields: {sorted(known)}.')
  return Transformer(dataclasses.replace(model.cfg, **updates))


def weight_bytes(params: Any) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))


forward_time = forward_timing.forward_time  # re-exported: the benchmarks' names
forward_probe = forward_timing.forward_probe


def forward_curve(model: Transformer, params: Any, *, batch: int, tokens: Sequence[int],
                  **kwargs) -> dict[int, float]:
  """{T: seconds per cached forward over T new tokens} (see `forward_time`)."""
  return {int(t): forward_time(model, params, batch=batch, tokens=int(t), **kwargs)
          for t in tokens}


def curve_at(curve: dict[int, float], tokens: int) -> float:
  """The curve at `tokens`, interpolated linearly between measured points (clamped)."""
  xs = sorted(curve)
  if tokens <= xs[0]:
    return curve[xs[0]]
  if tokens >= xs[-1]:
    return curve[xs[-1]] * tokens / xs[-1]
  for lo, hi in zip(xs, xs[1:]):
    if lo <= tokens <= hi:
      w = (tokens - lo) / (hi - lo)
      return curve[lo] * (1 - w) + curve[hi] * w
  raise AssertionError('unreachable')


def ideal_speedup(tau: float, t_ar_step: float, t_forward: float) -> float:
  """tau * t_AR / t_fwd: the speedup over AR if a step cost exactly one target forward over
  the step's tokens (no drafting, no loop overhead)."""
  return tau * t_ar_step / t_forward


# ----------------------------------------------------------------------------------------
# Models whose forward costs (almost) nothing.
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NoopModel:
  """Stands in for a `Transformer` of config `cfg`: same call signature and output shapes,
  but the forward only does the cache's slot bookkeeping (no K/V written, no layer run).

  The logits are a fixed hash of the token, position and id (confident enough that drafting
  loops run to full length), so decoding proceeds; what the decoder accepts is not
  meaningful.
  """
  cfg: ModelConfig

  def apply(self, variables, tokens_BxT=None, positions_BxT=None, cache=None,
            write_slots_BxT=None, attn_mask=None, inputs_embeds_BxTxD=None,
            layer_range=None, return_hidden=False, return_step_states=False,
            parents_BxT=None, **unused):
    del variables, parents_BxT, unused
    cfg = self.cfg
    if tokens_BxT is None:
      B, T = inputs_embeds_BxTxD.shape[:2]
      tokens_BxT = jnp.zeros((B, T), jnp.int32)
    B, T = tokens_BxT.shape
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    positions_BxT = positions_BxT.astype(jnp.int32)
    # Opaque to the compiler (a modular hash of token, position and id, not a one-hot it
    # could see through): the argmaxes and comparisons downstream stay real work.
    v_1x1xV = jnp.arange(cfg.vocab_size, dtype=jnp.int32)[None, None]
    h = (v_1x1xV * 7919 + tokens_BxT[..., None] * 104729 + positions_BxT[..., None] * 1299709)
    logits = ((h % 1009) * (20.0 / 1009)).astype(jnp.float32)
    # Every input is read, so what the decoder computes to feed the model (masks, embeddings)
    # is not dead code: it stays in the step's 'everything else'.
    for x in (attn_mask, inputs_embeds_BxTxD):
      if isinstance(x, jax.Array) or hasattr(x, 'dtype'):
        logits = logits + 1e-30 * jnp.sum(jnp.asarray(x).astype(jnp.float32))
    new_cache = None
    if cache is not None:
      if write_slots_BxT is None:
        write_slots_BxT = positions_BxT
      slots_BxT, key_pos_BxS, _ = cache.begin_write(positions_BxT, write_slots_BxT)
      # Its keys and values are never written or read: moves owed to them (a tree path, see
      # Cache.gather(defer=True)) are left unmade, as a real forward makes them in its write.
      new_cache = cache.replace(moves=None).end_write(cache.layers, key_pos_BxS, slots_BxT)
    lo, hi = layer_range if layer_range is not None else (0, cfg.num_layers)
    h_BxTxD = jnp.zeros((B, T, cfg.d_model), cfg.compute_dtype)
    hidden = tuple(h_BxTxD for _ in range(hi - lo + 1)) if return_hidden else None
    return transformer_lib.ModelOutput(logits_BxTxV=logits.astype(jnp.float32),
                                       cache=new_cache, hidden=hidden,
                                       last_hidden_BxTxD=h_BxTxD, step_states=None)


def noop_models(models: base.Models, which: Sequence[str] = ('target',)) -> base.Models:
  """`models` with the named ones ('target' and/or extras) replaced by `NoopModel`s."""
  unknown = set(which) - {'target'} - {k for k, _ in models.extras}
  if unknown:
    raise ValueError(f'No models {sorted(unknown)} to replace.')
  swap = lambda name, m: NoopModel(m.cfg) if name in which and hasattr(m, 'cfg') else m
  return base.Models(target=swap('target', models.target),
                     extras=tuple((k, swap(k, m)) for k, m in models.extras))


# The flax modules that draft inside a decoder (their params are extras of the run, their
# calls are not `Models` calls).
DRAFT_MODULES = (heads_lib.MedusaHeads, heads_lib.MTPModules, heads_lib.KangarooAdapter,
                 eagle_lib.EagleDraft, chimera_lib.ChimeraDraft)


@contextlib.contextmanager
def noop_draft_modules(classes: Sequence[type] = DRAFT_MODULES) -> Iterator[None]:
  """While active (at trace time), `cls.apply` of each class returns zeros of the shapes and
  dtypes the real call returns (`jax.eval_shape`), plus 1e-30 x the sum of every array input
  so that what the decoder computes to feed the module is not dead code. jax's trace caches
  are cleared on entry and exit, so no program traced with the real modules is reused while
  they are patched, nor the other way round."""
  saved = {cls: cls.__dict__.get('apply') for cls in classes}

  def make(cls):
    real = super(cls, cls).apply if saved[cls] is None else saved[cls]

    def apply(self, variables, *args, **kwargs):
      shapes = jax.eval_shape(lambda: real(self, variables, *args, **kwargs))
      leaves = [x for x in jax.tree.leaves((args, kwargs)) if hasattr(x, 'dtype')
                and jnp.issubdtype(x.dtype, jnp.number)]
      touch = sum((1e-30 * jnp.sum(jnp.asarray(x).astype(jnp.float32)) for x in leaves),
                  jnp.float32(0))

      def zeros(sd):
        z = jnp.zeros(sd.shape, sd.dtype)
        return z + touch.astype(sd.dtype) if jnp.issubdtype(sd.dtype, jnp.floating) else z
      return jax.tree.map(zeros, shapes)
    return apply

  jax.clear_caches()
  try:
    for cls in classes:
      cls.apply = make(cls)
    yield
  finally:
    for cls, fn in saved.items():
      if fn is None:
        del cls.apply
      else:
        cls.apply = fn
    jax.clear_caches()
