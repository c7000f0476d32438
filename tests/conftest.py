"""Test set-up: 8 virtual CPU devices (multi-device tests), float32 everywhere."""

import functools
import os

# Must happen before jax is imported anywhere.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import pytest  # noqa: E402

from models import config as config_lib  # noqa: E402


def small_config(**overrides) -> config_lib.ModelConfig:
  """A model that compiles in seconds (the `test` preset, vocab 64)."""
  d = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
           mlp_dim=64, max_seq_len=128)
  d.update(overrides)
  return config_lib.ModelConfig(**d)


@pytest.fixture
def cfg() -> config_lib.ModelConfig:
  return small_config()


def pytest_report_header(config):
  return f'jax {jax.__version__}, devices: {jax.devices()}'


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
