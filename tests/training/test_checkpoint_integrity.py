"""Checkpoints that changed on disk: detected (digests, finiteness), skipped for the previous
step with one warning line, and moved aside by training so that the run can finish.

Corruptions keep every file's size (the case Orbax's own checks miss) or break the OCDBT
files (the case Orbax notices, noisily)."""

import glob
import json
import os
import random
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

import testlib
from testlib import lm_test_config
from training import trainer
from workdir import checkpoint, loading

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _files(workdir, step, item):
  pattern = os.path.join(workdir, 'checkpoints', str(step), item, '**', '*')
  return sorted(f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f))


def _garble(path, n, seed, offset=None):
  """Overwrites n bytes of `path` in place (size kept) with random different bytes."""
  rng = random.Random(seed)
  size = os.path.getsize(path)
  offset = size // 2 if offset is None else offset
  with open(path, 'r+b') as f:
    f.seek(offset)
    old = f.read(n)
    f.seek(offset)
    f.write(bytes((b + rng.randrange(1, 256)) % 256 for b in old))


def _flip_bit(path, seed):
  rng = random.Random(seed)
  size = os.path.getsize(path)
  offset = rng.randrange(size // 4, 3 * size // 4)
  with open(path, 'r+b') as f:
    f.seek(offset)
    byte = f.read(1)[0]
    f.seek(offset)
    f.write(bytes([byte ^ (1 << rng.randrange(8))]))


def _raw_leaves(item_dir):
  """The arrays of a checkpoint item as Orbax reads them (numpy, no digest check)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ck = ocp.PyTreeCheckpointer()
  tree = ck.metadata(item_dir)
  tree = getattr(tree, 'item_metadata', None) or getattr(tree, 'tree', None) or tree
  tree = getattr(tree, 'tree', tree)
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return [np.asarray(x) for x in jax.tree.leaves(
      ck.restore(item_dir, args=ocp.args.PyTreeRestore(restore_args=args)))]


def _damage(data, pattern, attempt):
  largest = max(data, key=os.path.getsize)
  if pattern == 'bytes32':  # 32 bytes inside the largest array chunk file
    size = os.path.getsize(largest)
    _garble(largest, 32, seed=attempt,
            offset=None if attempt == 0 else random.Random(attempt).randrange(size - 32))
  elif pattern == 'bytes16x4':  # 16 bytes at four places of two files
    for i, f in enumerate(sorted(data, key=os.path.getsize)[-2:]):
      for k in range(2):
        size = os.path.getsize(f)
        offset = ((k + 1) * size // 3 if attempt == 0 else
                  random.Random(100 * attempt + 10 * i + k).randrange(size - 16))
        _garble(f, 16, seed=10 * i + k + 100 * attempt, offset=offset)
  elif pattern == 'bitflip':  # one bit of one element
    _flip_bit(largest, seed=1 + attempt)
  else:
    raise ValueError(pattern)


def corrupt(workdir, step, pattern, item='params'):
  """Damages checkpoint `step` of `workdir` in place; every pattern but 'ocdbt' keeps sizes.

  An OCDBT data file can hold bytes no array refers to (superseded writes), and changing those
  changes nothing: a size-keeping pattern is applied again elsewhere (the file restored
  first) until Orbax, reading without digests, returns different arrays or fails."""
  files = _files(workdir, step, item)
  data = [f for f in files if f'{os.sep}d{os.sep}' in f]
  if pattern == 'ocdbt':  # every OCDBT data file broken (Orbax raises while reading)
    for f in data:
      _garble(f, 64, seed=2)
    return
  item_dir = os.path.join(workdir, 'checkpoints', str(step), item)
  before = _raw_leaves(item_dir)
  saved = {}
  for f in data:
    with open(f, 'rb') as fh:
      saved[f] = fh.read()
  for attempt in range(8):
    _damage(data, pattern, attempt)
    try:
      after = _raw_leaves(item_dir)
    except Exception:  # pylint: disable=broad-except
      return  # unreadable: damaged
    if any(not np.array_equal(a, b) for a, b in zip(before, after)):
      return
    for f, content in saved.items():  # only dead bytes changed: undo, try elsewhere
      with open(f, 'wb') as fh:
        fh.write(content)
  raise AssertionError(f'No change to the arrays of {item_dir} after 8 tries of {pattern}.')


def _copy(src, dst):
  shutil.copytree(src, dst)
  if os.path.exists(os.path.join(dst, 'lock')):
    os.remove(os.path.join(dst, 'lock'))
  return dst


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


@pytest.mark.parametrize('pattern', ['bytes32', 'bytes16x4', 'bitflip', 'ocdbt'])
def test_damaged_params_fall_back_to_the_previous_step_with_one_warning(
    tmp_path, trained_workdir, capfd, pattern):
  workdir = _copy(trained_workdir, str(tmp_path / 'w'))
  corrupt(workdir, 20, pattern)
  capfd.readouterr()
  loaded = loading.load_model(workdir)
  out, err = capfd.readouterr()
  assert loaded.step == 10
  warnings = [line for line in err.splitlines() if line.strip()]
  assert len(warnings) == 1 and warnings[0].startswith('warning: restored step 10'), err
  assert 'step 20' in warnings[0] and 'Traceback' not in err and 'warning' not in out
  ref = loading.load_model(trained_workdir, step=10)
  for a, b in zip(_leaves(loaded.params), _leaves(ref.params)):
    np.testing.assert_array_equal(a, b)
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '20')), 'reading moves nothing'
  with pytest.raises(checkpoint.CheckpointError, match='step 20'):
    loading.load_model(workdir, step=20)


@pytest.mark.parametrize('steps', [20, 30])
def test_training_resumes_past_a_damaged_checkpoint_and_finishes(tmp_path, trained_workdir,
                                                                 data_dir, capfd, steps):
  """The damaged step is moved to checkpoints_unreadable/ (kept for inspection): retraining
  to it (and past it) works, reruns work, and the retrained step equals the original (same
  schedule: steps=20)."""
  workdir = _copy(trained_workdir, str(tmp_path / 'w'))
  corrupt(workdir, 20, 'bytes32', item='opt_state')
  trainer.train_and_evaluate(lm_test_config(data_dir, steps=steps), workdir)
  err = capfd.readouterr().err
  assert 'warning: restored step 10' in err and 'checkpoints_unreadable' in err
  assert os.listdir(os.path.join(workdir, 'checkpoints_unreadable')) == ['20']
  steps_now = checkpoint.Checkpointer(workdir, read_only=True).all_steps()
  assert steps_now == [10, 20] + ([30] if steps == 30 else [])
  if steps == 20:
    for a, b in zip(_leaves(loading.load_model(workdir, step=20).params),
                    _leaves(loading.load_model(trained_workdir, step=20).params)):
      np.testing.assert_array_equal(a, b)
  trainer.train_and_evaluate(lm_test_config(data_dir, steps=steps), workdir)  # a rerun
  assert 'warning' not in capfd.readouterr().err


def test_non_finite_or_absurd_parameters_are_refused(tmp_path, capfd):
  """Values whose digest matches (saved that way) but that training cannot have produced:
  skipped like unreadable checkpoints; with no usable step left, a clear error."""
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=10, async_save=False)
  good = {'model': {'w': np.full((4, 4), 0.5, np.float32)}}
  opt = {'mu': np.zeros((4, 4), np.float32)}
  ckpt.save(1, types.SimpleNamespace(params=good, opt_state=opt), {}, {'model': {}})
  for step, value in ((2, np.inf), (3, 3e37), (4, np.nan)):
    bad = {'model': {'w': np.full((4, 4), 0.5, np.float32)}}
    bad['model']['w'][1, 2] = value
    ckpt.save(step, types.SimpleNamespace(params=bad, opt_state=opt), {}, {'model': {}})
  ckpt.close()
  abstract = lambda meta, step: (jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), good), None)
  reader = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  capfd.readouterr()
  step, params, *_ = reader.restore(abstract)
  assert step == 1 and np.all(np.asarray(params['model']['w']) == 0.5)
  err = capfd.readouterr().err
  assert err.count('\n') == 1 and 'non-finite' in err and '3e+37' in err, err
  with pytest.raises(checkpoint.CheckpointError, match=r"step 3: .*\['model'\]\['w'\]"):
    reader.restore(abstract, step=3)


def test_digests_see_every_element_and_ignore_sharding():
  from workdir import integrity  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(0).normal(size=(64, 40)).astype(np.float32)
  base = integrity.digests({'x': x})
  for i, j in ((0, 0), (63, 39), (17, 5)):
    y = x.copy()
    y[i, j] = np.nextafter(y[i, j], np.float32(np.inf))  # one ulp
    assert integrity.digests({'x': y}) != base
  swapped = x.copy()
  swapped[[0, 1]] = swapped[[1, 0]]  # same values, other places
  assert integrity.digests({'x': swapped}) != base
  mesh = jax.make_mesh((4, 2), ('a', 'b'), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
      'a', 'b')))
  assert integrity.digests({'x': sharded}) == base
  bf16 = integrity.digests({'x': jax.numpy.asarray(x, jax.numpy.bfloat16)})
  assert bf16 != base


def test_sharded_leaves_are_summarised_one_program_at_a_time(monkeypatch):
  """No digest or max program over a multi-device leaf is dispatched while the previous one
  still runs (many such programs in flight deadlocked XLA:CPU's virtual devices during a
  save); leaves large enough that one program takes far longer than dispatching the next."""
  from workdir import integrity  # pylint: disable=g-import-not-at-top
  mesh = jax.make_mesh((8,), ('d',), axis_types=(jax.sharding.AxisType.Auto,))
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('d'))
  tree = {f'w{i}': jax.device_put(np.full((8, 2**18), i, np.float32), spec) for i in range(4)}
  issued, overlapped = [], []

  def spy(jitted):
    def call(x):
      overlapped.extend(r for r in issued if not r.is_ready())
      issued.append(jitted(x))
      return issued[-1]
    return call

  monkeypatch.setattr(integrity, '_digest_jit', spy(integrity._digest_jit))
  monkeypatch.setattr(integrity, '_max_abs_jit', spy(integrity._max_abs_jit))
  integrity.check('params', tree, integrity.digests(tree), bound=10.0)
  assert len(issued) == 12 and not overlapped


@pytest.mark.slow
def test_cli_fallback_prints_one_warning_and_keeps_json_clean(tmp_path, trained_workdir,
                                                              data_dir):
  """train.py past a checkpoint Orbax fails to read (asyncio leftovers included): one warning
  line, the run finishes; sample.py --json: stdout holds only JSON, warnings on stderr."""
  workdir = _copy(trained_workdir, str(tmp_path / 'w'))
  corrupt(workdir, 20, 'ocdbt', item='opt_state')
  corrupt(workdir, 20, 'ocdbt', item='params')
  out = subprocess.run(
      [sys.executable, 'train.py', '--config=configs/lm.py:test', f'--workdir={workdir}',
       f'--config.data.data_dir={data_dir}', '--config.data.batch_size=8',
       '--config.train.steps=30'], cwd=ROOT, env=testlib.subprocess_env(), capture_output=True,
      text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  assert [line for line in out.stderr.splitlines() if line.strip()] == [
      line for line in out.stderr.splitlines() if line.startswith('warning: restored step 10')]
  assert out.stderr.count('\n') == 1, out.stderr[-3000:]
  corrupt(workdir, 30, 'bytes32')
  out = subprocess.run(
      [sys.executable, 'sample.py', f'--workdir={workdir}', '--prompt=' + 'x' * 300,
       '--max_new_tokens=8', '--json'], cwd=ROOT, env=testlib.subprocess_env(), capture_output=True,
      text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in out.stdout.splitlines()]
  assert len(rows) == 1 and len(rows[0]['token_ids']) == 8
  err = out.stderr.splitlines()
  assert len(err) == 2, out.stderr[-3000:]
  assert any(line.startswith('warning: restored step 20') for line in err)
  assert any(line.startswith('warning: prompt 0 has 301 tokens') for line in err)
