"""Test set-up: 8 virtual CPU devices (multi-device tests), float32 everywhere."""

import gc
import os
import tempfile

# Must happen before jax is imported anywhere.
# LLVM optimisation level 0: the suite's programs are small and run briefly, while compiling
# them is most of its time (test_spec_decoders: 406 -> 258 CPU seconds with identical
# results). XLA:CPU's older LLVM IR emitters instead of its MLIR fusion emitters: they compile
# the same fusions in less CPU time (six test_spec_decoders cases: 77 -> 53 s; the
# spec_verify_reference, model_forward and spec_training modules: 463 -> 385 s; same results,
# and the whole suite passes with it). LLVM code generation in one piece rather than split
# for parallel compilation: on 2 cores shared by 2 test workers the split only adds work
# (cold-cache CPU seconds, h2o + kv_predict tests: 80.7 and 82.5 -> 75.9; one spec-decoder
# case: 19.6 and 20.7 -> 18.6; same programs, same results). The train.py / sample.py
# subprocesses inherit all three.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8 '
                      '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false '
                      '--xla_cpu_parallel_codegen_split_count=1')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# A persistent compilation cache per xdist worker (`PYTEST_XDIST_WORKER` is set before this
# file is imported), shared with the train.py / sample.py subprocesses its tests start: many
# tests compile the same test-size functions (about a quarter of the suite's time on a cold
# cache, more on a warm one). Keys cover the HLO, the devices and the jax version, so a stale
# entry is never reused. Not one cache for all workers: jax writes an entry in place without
# a lock, and a worker reading it meanwhile deserialised a truncated executable (a segfault in
# compilation_cache.get_executable_and_time); jax's lock comes only with a size bound, whose
# eviction scan of every entry on each write made a cold suite several times slower.
_WORKER = os.environ.get('PYTEST_XDIST_WORKER')
if _WORKER or 'JAX_COMPILATION_CACHE_DIR' not in os.environ:  # a worker inherits main's
  os.environ['JAX_COMPILATION_CACHE_DIR'] = os.path.join(
      tempfile.gettempdir(), f"leapfrog-jax-cache-{os.getuid()}-{_WORKER or 'main'}")
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import jax  # noqa: E402
import pytest  # noqa: E402

import testlib  # noqa: E402
from testlib import small_config  # noqa: E402


@pytest.fixture
def cfg():
  return small_config()


def _max_map_count() -> int:
  try:
    with open('/proc/sys/vm/max_map_count') as f:
      return int(f.read())
  except OSError:
    return 65530


_MAX_MAPS = _max_map_count()
_MAP_BUDGET = _MAX_MAPS // 2


@pytest.fixture(autouse=True, scope='module')
def _release_compiled_code():
  """Drops every compiled executable after each test module.

  XLA:CPU maps each executable's code into a few memory regions that live as long as the
  executable, and jit's caches (and `decoding.runner`'s programs) keep every executable alive. A worker of `pytest -n 2` passed
  Linux's default limit of 65,530 mappings per process (`vm.max_map_count`) about two thirds
  into the suite, and the next compile or cache load died (SIGSEGV in
  `get_executable_and_time`, SIGABRT in `backend_compile_and_load`) in whichever test was
  running. A module's later recompiles come from the persistent cache.
  """
  yield
  from decoding import runner  # pylint: disable=g-import-not-at-top
  runner.clear_compiled()
  jax.clear_caches()
  gc.collect()
  if os.path.exists('/proc/self/maps'):
    with open('/proc/self/maps') as f:
      maps = sum(1 for _ in f)
    if maps > _MAP_BUDGET:
      pytest.fail(f'This test process holds {maps} memory mappings after releasing compiled '
                  f'code (budget {_MAP_BUDGET}, Linux stops at {_MAX_MAPS}): something keeps '
                  'executables alive across modules.', pytrace=False)


def pytest_report_header(config):
  return f'jax {jax.__version__}, devices: {jax.devices()}'


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session')
def trained_workdir(tmp_path_factory, data_dir) -> str:
  """A `test`-preset run of 20 steps with checkpoints at steps 10 and 20 (do not modify)."""
  from training import trainer  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp('trained'))
  trainer.train_and_evaluate(testlib.lm_test_config(data_dir), workdir)
  return workdir
