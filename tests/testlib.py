"""Helpers shared by the tests (fixtures live in conftest.py)."""

import functools
import os

import jax

from models import config as config_lib


def compile_flags() -> str:
  """The suite's XLA flags (tests/conftest.py: the LLVM optimisation level) without its
  forced 8-device count: what a subprocess gets on top of its own device count."""
  return ' '.join(f for f in os.environ.get('XLA_FLAGS', '').split()
                  if not f.startswith('--xla_force_host_platform_device_count'))


# XLA options for the few programs whose running time outweighs their compile (the sampled
# distribution tests: 10^4 to 10^5 rows): compiled with XLA's usual optimisation instead of
# the suite's -O0 and older emitters (conftest.py), per program (`jax.jit(...,
# compiler_options=RUN_OPTIMISED)`, `run_decoder(..., compiler_options=RUN_OPTIMISED)`).
RUN_OPTIMISED = {'xla_backend_optimization_level': 2, 'xla_cpu_use_fusion_emitters': True}


def subprocess_env(*, concurrent: bool = False, **extra: str) -> dict[str, str]:
  """The environment for a train.py / sample.py subprocess: one host device (the suite's
  forced 8-device count dropped; its other XLA flags kept) plus `extra` variables.

  concurrent: the process runs beside this one or may be killed mid-run. It then gets no
  persistent compilation cache: jax writes a cache entry in place, so a process reading an
  entry that another is still writing, or that a killed process left half-written,
  deserialises a truncated executable and segfaults (seen in the suite after the killed-run
  and the concurrent-workdir tests).
  """
  env = dict(os.environ, **extra)
  env['XLA_FLAGS'] = f"{extra.get('XLA_FLAGS', '')} {compile_flags()}".strip()
  if concurrent:
    env.pop('JAX_COMPILATION_CACHE_DIR', None)
  return env


def peaked_diffusion_setup(batch: int, prompt_len: int, vocab_size: int, max_token: int):
  """(model, params, prompt_BxP, keys_B) for diffusion decoder tests: a one-layer model whose
  weight matrices are scaled by 8 (peaked, varied confidences, so several commits per step
  happen), random prompt tokens below `max_token` and one key per row."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from models import Transformer, init_params  # pylint: disable=g-import-not-at-top
  model = Transformer(small_config(vocab_size=vocab_size, num_layers=1))
  params = init_params(model, jax.random.key(0))
  params = jax.tree.map(lambda x: x * 8 if x.ndim == 2 else x, params)
  prompt = jax.random.randint(jax.random.key(1), (batch, prompt_len), 0, max_token)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(batch))
  return model, params, prompt, keys


def small_config(**overrides) -> config_lib.ModelConfig:
  """A model that compiles in seconds (the `test` preset, vocab 64)."""
  d = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
           mlp_dim=64, max_seq_len=128)
  d.update(overrides)
  return config_lib.ModelConfig(**d)


def _is_static(v) -> bool:
  return v is None or isinstance(v, (str, bool, int, float, tuple)) or (
      hasattr(v, '__dataclass_fields__') and getattr(type(v), '__hash__', None) is not None
      and not hasattr(v, 'replace'))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _jitted_apply(model, static_items, params, args, dynamic):
  return model.apply({'params': params}, *args, **dynamic, **dict(static_items))


def jit_apply(model):
  """model.apply, jitted: strings, tuples, None and frozen settings are static; arrays and
  caches are traced. Eager Flax dispatches op by op and is several times slower in tests."""
  def call(params, *args, **kwargs):
    static = tuple(sorted((k, v) for k, v in kwargs.items() if _is_static(v)))
    dynamic = {k: v for k, v in kwargs.items() if not _is_static(v)}
    return _jitted_apply(model, static, params, args, dynamic)
  return call


def lm_test_config(data_dir: str, **train_overrides):
  """configs/lm.py:test on the stdlib corpus prepared under `data_dir`, batch 8 so it splits
  over the 8 virtual devices (the default mesh is data=-1)."""
  from configs import lm  # pylint: disable=g-import-not-at-top
  c = lm.get_config('test')
  c.data.data_dir = data_dir
  c.data.batch_size = 8
  c.train.update(async_checkpointing=False, **train_overrides)
  return c


CODE_TEXT = 'def f(x):\n    return x + 1\n\nclass A:\n    pass\n' * 3


def short_fine_tune(c, workdir: str, data_dir: str, steps: int = 4) -> list[dict]:
  """Trains config `c` (a `test`-preset fine-tune whose init_from is set) for `steps` steps
  of batch 8 on the test corpus into `workdir`; its metrics.jsonl rows."""
  import json  # pylint: disable=g-import-not-at-top
  from training import trainer  # pylint: disable=g-import-not-at-top
  c.data.data_dir = data_dir
  c.data.batch_size = 8
  c.train.update(steps=steps, checkpoint_every=steps, eval_every=steps,
                 async_checkpointing=False)
  trainer.train_and_evaluate(c, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(l) for l in f]


def code_batch(tokenizer, roll: int, length: int = 33) -> dict[str, jax.Array]:
  """{'tokens': [2, length]}: a short code row and the same row rolled by `roll`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  row = np.asarray(tokenizer.encode(CODE_TEXT, add_bos=True)[:length], np.int32)
  return {'tokens': jax.numpy.asarray(np.stack([row, np.roll(row, roll)]))}


def train_extras(objective, model_params, extras, batch, *, steps: int, learning_rate: float):
  """`steps` jitted Adam steps of `objective.loss_fn` on one batch, updating the extras only
  (the model params frozen). Returns (extras, the loss before each step, the last metrics)."""
  import optax  # pylint: disable=g-import-not-at-top
  opt = optax.adam(learning_rate)

  @jax.jit
  def step(extras, state):
    (loss, metrics), g = jax.value_and_grad(
        lambda e: objective.loss_fn({'model': model_params, **e}, batch, jax.random.key(1)),
        has_aux=True)(extras)
    upd, state = opt.update(g, state)
    return optax.apply_updates(extras, upd), state, loss, metrics

  state, losses, metrics = opt.init(extras), [], {}
  for _ in range(steps):
    extras, state, loss, metrics = step(extras, state)
    losses.append(float(loss))
  return extras, losses, metrics


def ragged_ar_reference(models, params, prompts, *, max_new_tokens: int, cache_size: int,
                        pad_id: int) -> tuple[int, list[list[int]]]:
  """(eos, greedy AR rows under it): the EOS is the generated token that makes the rows stop
  at the most different lengths (at least three, asserted), so a decoder compared with these
  rows must handle a ragged batch. The rows are the EOS-free greedy rows cut after their first
  EOS (greedy rows do not depend on when the other rows stop), not a second AR run with that
  EOS: its program (eos_id is static) cost one more compile in each module."""
  from decoding import registry, run_decoder  # pylint: disable=g-import-not-at-top
  kw = dict(max_new_tokens=max_new_tokens, cache_size=cache_size, pad_id=pad_id)
  free = [r.tokens for r in run_decoder(registry.build('ar'), models, params, prompts,
                                        eos_id=-1, **kw)[0]]

  def lengths(eos):  # where each row would stop with this EOS
    return {t.index(eos) + 1 if eos in t else max_new_tokens for t in free}
  eos = max(sorted({t for r in free for t in r}), key=lambda e: len(lengths(e)))
  ref = [t[:t.index(eos) + 1] if eos in t else t for t in free]
  assert len({len(r) for r in ref}) > 2, 'rows should finish at different times'
  return eos, ref


def decode_like_ar(decoder, models, params, prompts, eos: int, ref: list[list[int]], *,
                   max_new_tokens: int, cache_size: int, pad_id: int):
  """Runs a lossless one-model-forward-per-step decoder and asserts its tokens are `ref`
  (`ragged_ar_reference`) and its statistics add up: committed tokens per step sum to the
  generated ones, one target forward per step plus each row's prefill. Returns its stats."""
  from decoding import run_decoder  # pylint: disable=g-import-not-at-top
  assert decoder.lossless
  rows, stats = run_decoder(decoder, models, params, prompts, max_new_tokens=max_new_tokens,
                            cache_size=cache_size, eos_id=eos, pad_id=pad_id)
  assert [r.tokens for r in rows] == ref
  assert stats.generated == sum(map(len, ref))
  assert sum(m * c for m, c in enumerate(stats.step_tokens_hist)) + len(prompts) == \
      stats.generated
  assert stats.target_forwards == sum(stats.step_tokens_hist) + len(prompts)
  return stats


def counting_forward_probes(monkeypatch, calls: list):
  """Replaces `benchmarks.cost_model.forward_probe` with one whose probes run briefly
  (min_seconds 0.01) and append (tokens, seconds) to `calls` at every call, so that a test
  can check when and how often a benchmark times them."""
  from benchmarks import cost_model  # pylint: disable=g-import-not-at-top
  make = cost_model.forward_probe

  def counting_probe(*a, **kw):
    probe = make(*a, **dict(kw, min_seconds=0.01))

    def timed():
      calls.append((kw['tokens'], probe()))
      return calls[-1][1]
    return timed

  monkeypatch.setattr(cost_model, 'forward_probe', counting_probe)


def sub_jaxprs(eqn) -> list:
  """The jaxprs nested in a jaxpr equation's params (loop bodies, branches, calls)."""
  out = []
  for v in eqn.params.values():
    for sub in (v if isinstance(v, (list, tuple)) else [v]):
      if isinstance(sub, jax.extend.core.ClosedJaxpr):
        out.append(sub.jaxpr)
      elif isinstance(sub, jax.extend.core.Jaxpr):
        out.append(sub)
  return out
