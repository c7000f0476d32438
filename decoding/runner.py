"""Host-side driver: validate prompts, batch and pad them, compile once, time, collect stats.

  rows, stats = run_decoder(decoder, models, params, prompts, max_new_tokens=64,
                            cache_size=1024, eos_id=tok.eos_id, pad_id=tok.pad_id)

Compilation is done ahead of time and timed separately; `wall_time_s` and `tokens_per_s`
cover execution only.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from decoding import base
from models import sharding as sharding_lib
from models import transformer as transformer_lib


@dataclasses.dataclass
class RowOutput:
  """One prompt's result. `tokens` excludes padding; EOS, if generated, is the last token."""
  index: int
  prompt: list[int]
  tokens: list[int]
  target_forwards: int
  other_forwards: int
  step_tokens_hist: list[int]
  extra: dict[str, Any]

  @property
  def tau(self) -> float:
    return len(self.tokens) / max(self.target_forwards, 1)


@dataclasses.dataclass
class RunStats:
  """Totals over all prompts of one decoder run."""
  decoder: str
  num_prompts: int
  generated: int
  target_forwards: int
  other_forwards: int
  wall_time_s: float
  compile_time_s: float
  step_tokens_hist: list[int]
  extra: dict[str, Any]
  lossless: bool = True        # the decoder's settings reproduce the target
  cheaper_steps: bool = False  # a step may cost less than an AR step (Decoder.cheaper_steps)

  @property
  def tau(self) -> float:
    """Tokens per target forward, the bonus token counted (prefill included)."""
    return self.generated / max(self.target_forwards, 1)

  @property
  def tokens_per_s(self) -> float:
    return self.generated / max(self.wall_time_s, 1e-9)

  def as_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d.update(tau=self.tau, tokens_per_s=self.tokens_per_s)
    return d


def validate_prompts(prompts: Sequence[Sequence[int]], *, max_new_tokens: int, cache_size: int,
                     extra_slots: int = 0) -> None:
  """Clear errors for empty prompts and prompts that do not fit the cache."""
  if not prompts:
    raise ValueError('No prompts given.')
  if max_new_tokens < 1:
    raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}.')
  for i, p in enumerate(prompts):
    if len(p) == 0:
      raise ValueError(f'Prompt {i} is empty: a prompt needs at least one token (e.g. BOS).')
    need = len(p) + max_new_tokens + extra_slots
    if need > cache_size:
      raise ValueError(
          f'Prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens}'
          + (f' and {extra_slots} slots of decoder lookahead' if extra_slots else '')
          + f' it needs {need} cache slots but the cache has {cache_size}. Shorten the prompt, '
          'lower max_new_tokens or raise the cache size.')


def fused_layouts(models: base.Models, params: dict[str, Any]) -> dict[str, Any]:
  """params with the fused projection layout (`transformer.fuse_projections`) for the target
  and every extra module whose config sets `fused_projections` (draft models, EAGLE
  layers, heads: each module's attention and MLP weights)."""
  out = dict(params)
  for name, module in (('target', models.target),) + tuple(models.extras):
    cfg = getattr(module, 'cfg', None)
    if getattr(cfg, 'fused_projections', False) and name in out:
      out[name] = transformer_lib.fuse_projections(out[name])
  return out


@functools.partial(jax.jit, static_argnames=('decoder', 'models', 'max_new_tokens',
                                             'cache_size', 'eos_id', 'pad_id'))
def _generate(decoder, models, params, prompt_BxP, prompt_len_B, row_keys_B, *, max_new_tokens,
              cache_size, eos_id, pad_id):
  params = fused_layouts(models, params)  # once per call, before any decode loop
  return decoder.generate(models, params, prompt_BxP, prompt_len_B, row_keys_B,
                          max_new_tokens=max_new_tokens, cache_size=cache_size, eos_id=eos_id,
                          pad_id=pad_id)


def lower_generate(decoder: base.Decoder, models: base.Models, params: dict[str, Any],
                   prompt_BxP: jax.Array, prompt_len_B: jax.Array, row_keys_B: jax.Array, *,
                   max_new_tokens: int, cache_size: int, eos_id: int, pad_id: int):
  """The jitted `decoder.generate`, lowered for these shapes (`.compile()` it once, then call
  it with (params, prompt_BxP, prompt_len_B, row_keys_B)). `decoder.prepare` runs first."""
  decoder = decoder.prepare(models, params, batch=prompt_BxP.shape[0], cache_size=cache_size)
  return _generate.lower(decoder, models, params, prompt_BxP, prompt_len_B, row_keys_B,
                         max_new_tokens=max_new_tokens, cache_size=cache_size, eos_id=eos_id,
                         pad_id=pad_id)


def shard_params(models: base.Models, params: dict[str, Any], mesh: Mesh,
                 rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES) -> dict[str, Any]:
  """Places each model's params by its logical axes (unknown modules are replicated)."""
  out = {}
  for name, tree in params.items():
    module = models[name] if name == 'target' or name in dict(models.extras) else None
    if isinstance(module, transformer_lib.Transformer):
      shardings = sharding_lib.tree_shardings(transformer_lib.logical_axes(module), tree, mesh,
                                              rules)
    else:
      shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)
    out[name] = jax.device_put(tree, shardings)
  return out


# Compiled programs by (decoder, models, shapes, static arguments): running a decoder again on
# prompts of the same shapes (timing repeats) reuses its program. Bounded, least recently used
# first out: every program holds its machine code in memory mappings, and a process that kept
# them all (a long comparison, the test suite) ran into Linux's per-process mapping limit.
_COMPILED: collections.OrderedDict[Any, Any] = collections.OrderedDict()
_COMPILED_MAX = 32


def clear_compiled() -> None:
  """Drops every program `run_decoder` kept (see `_COMPILED`)."""
  _COMPILED.clear()


def _compiled(decoder, models, params, args, compiler_options=None, **static):
  """(compiled program, seconds spent compiling it now: 0 when reused)."""
  shapes = jax.tree.map(lambda x: (x.shape, str(x.dtype), getattr(x, 'sharding', None)),
                        (params, args))
  options = tuple(sorted((compiler_options or {}).items()))
  key = (decoder, models, jax.tree.structure(shapes), tuple(jax.tree.leaves(shapes)),
         tuple(sorted(static.items())), options)
  if key in _COMPILED:
    _COMPILED.move_to_end(key)
    return _COMPILED[key], 0.0
  t0 = time.perf_counter()
  fn = lower_generate(decoder, models, params, *args, **static).compile(
      dict(options) if options else None)
  _COMPILED[key] = fn
  while len(_COMPILED) > _COMPILED_MAX:
    _COMPILED.popitem(last=False)
  return fn, time.perf_counter() - t0


def _pad_to(n: int, multiple: int) -> int:
  return int(math.ceil(n / multiple) * multiple)


def run_decoder(decoder: base.Decoder, models: base.Models, params: dict[str, Any],
                prompts: Sequence[Sequence[int]], *, max_new_tokens: int, cache_size: int,
                eos_id: int, pad_id: int, seed: int = 0, batch_size: int | None = None,
                mesh: Mesh | None = None, rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES,
                prompt_bucket: int = 32, compiler_options: dict[str, Any] | None = None
                ) -> tuple[list[RowOutput], RunStats]:
  """Runs `decoder` over all prompts in batches; returns per-row outputs and totals.

  Row i's random key is fold_in(key(seed), i), so a prompt gives the same output alone or in
  any batch. `compiler_options`: XLA options for this program's compile only, overriding
  XLA_FLAGS (e.g. {'xla_backend_optimization_level': 2} where the process compiles at -O0, as
  the test suite does, for a program whose running time outweighs its compile). With a `mesh`, params are sharded by the rules and the batch over the data axes
  (a short last batch is filled with copies, which are dropped).
  """
  validate_prompts(prompts, max_new_tokens=max_new_tokens, cache_size=cache_size,
                   extra_slots=decoder.extra_cache_slots(max_new_tokens))
  batch_size = batch_size or len(prompts)
  if mesh is not None:
    params = shard_params(models, params, mesh, rules)
    divisor = sharding_lib.batch_divisor(mesh, rules)
    batch_size = _pad_to(batch_size, divisor)
  base_key = jax.random.key(seed)
  rows: list[RowOutput] = []
  wall = compile_time = 0.0
  for start in range(0, len(prompts), batch_size):
    chunk = list(range(start, min(start + batch_size, len(prompts))))
    ids = chunk + [chunk[-1]] * (batch_size - len(chunk) if mesh is not None else 0)
    P_len = _pad_to(max(len(prompts[i]) for i in ids), prompt_bucket)
    P_len = min(P_len, cache_size)
    prompt_BxP = np.full((len(ids), P_len), pad_id, np.int32)
    for r, i in enumerate(ids):
      prompt_BxP[r, :len(prompts[i])] = prompts[i]
    prompt_len_B = np.asarray([len(prompts[i]) for i in ids], np.int32)
    keys_B = jax.vmap(lambda i: jax.random.fold_in(base_key, i))(jnp.asarray(ids))
    args = [jnp.asarray(prompt_BxP), jnp.asarray(prompt_len_B), keys_B]
    if mesh is not None:
      args = [jax.device_put(a, sharding_lib.batch_sharding(mesh, a.ndim, rules)) for a in args]
    fn, seconds = _compiled(decoder, models, params, args, compiler_options,
                            max_new_tokens=max_new_tokens, cache_size=cache_size, eos_id=eos_id,
                            pad_id=pad_id)
    compile_time += seconds
    t0 = time.perf_counter()
    result = jax.block_until_ready(fn(params, *args))
    wall += time.perf_counter() - t0
    result = jax.device_get(result)
    bad = int(np.sum(result.extra.get('bad_draft_steps', 0)))
    if bad:
      raise RuntimeError(
          f'{decoder.name}: its drafter proposed token ids outside the vocabulary [0, '
          f'{models.target.cfg.vocab_size}) in {bad} steps (a bug in the drafter: such ids '
          'are never accepted, but its acceptance and speed are not what it would reach).')
    for r, i in enumerate(chunk):
      n = int(result.num_generated_B[r])
      rows.append(RowOutput(
          index=i, prompt=list(prompts[i]), tokens=[int(t) for t in result.tokens_BxN[r, :n]],
          target_forwards=int(result.target_forwards_B[r]),
          other_forwards=int(result.other_forwards_B[r]),
          step_tokens_hist=[int(x) for x in result.step_tokens_hist_BxM[r]],
          extra={k: np.asarray(v[r]).tolist() for k, v in result.extra.items()}))
  hist_len = max(len(r.step_tokens_hist) for r in rows)
  hist = np.zeros(hist_len, np.int64)
  for r in rows:
    hist[:len(r.step_tokens_hist)] += r.step_tokens_hist
  extra = {}
  for k in rows[0].extra:
    try:
      extra[k] = np.sum([np.asarray(r.extra[k]) for r in rows], axis=0).tolist()
    except ValueError:
      pass
  stats = RunStats(decoder=decoder.name, num_prompts=len(prompts),
                   generated=sum(len(r.tokens) for r in rows),
                   target_forwards=sum(r.target_forwards for r in rows),
                   other_forwards=sum(r.other_forwards for r in rows),
                   wall_time_s=wall, compile_time_s=compile_time,
                   step_tokens_hist=hist.tolist(), extra=extra,
                   lossless=decoder.is_lossless(), cheaper_steps=decoder.cheaper_steps())
  return rows, stats
