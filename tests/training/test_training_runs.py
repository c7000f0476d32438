"""Whole runs: exact resume, crash recovery, NaN stop, and every bad input's clear error."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import testlib
from testlib import lm_test_config
from training import trainer
from workdir import checkpoint, loading

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _params(workdir, step=None):
  return jax.tree.leaves(jax.device_get(loading.load_model(workdir, step=step).params))


def _assert_same_params(a, b, atol=0.0):
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def _final_eval(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  return [r for r in rows if r['split'] == 'eval'][-1]


def test_stop_and_resume_equals_uninterrupted(tmp_path, data_dir):
  """12 steps, stopped after 7 (checkpoints at 4 and 7) and resumed: the uninterrupted run's
  parameters and final eval loss. The uninterrupted run saves only at step 12 (a save costs
  about a CPU second here; how often a run saves must not change its numbers)."""
  full = str(tmp_path / 'full')
  trainer.train_and_evaluate(lm_test_config(data_dir, steps=12, checkpoint_every=12), full)
  split = str(tmp_path / 'split')
  out = trainer.train_and_evaluate(
      lm_test_config(data_dir, steps=12, checkpoint_every=4, stop_after_steps=7), split)
  assert out['step'] == 7
  assert checkpoint.Checkpointer(split, read_only=True).latest_step() == 7
  trainer.train_and_evaluate(lm_test_config(data_dir, steps=12, checkpoint_every=4), split)
  _assert_same_params(_params(split), _params(full))
  assert _final_eval(split)['loss'] == pytest.approx(_final_eval(full)['loss'], abs=1e-6)


def _train_cmd(workdir, data_dir, steps, every):
  return [sys.executable, 'train.py', '--config=configs/lm.py:test', f'--workdir={workdir}',
          f'--config.data.data_dir={data_dir}', f'--config.train.steps={steps}',
          f'--config.train.checkpoint_every={every}', '--config.data.seq_len=64',
          '--config.train.eval_every=1000', '--config.train.progress_bar=False']


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path, data_dir):
  """SIGKILL during training (async checkpoints in flight), then resume: same parameters.

  40 steps, a checkpoint every 10, killed once the checkpoint of step 20 exists: 20 steps and
  two checkpoints of margin before the run could finish. The uninterrupted reference saves only
  its final checkpoint (each save costs CPU time; how often a run saves must not change its
  parameters)."""
  env, steps = testlib.subprocess_env(concurrent=True), 40
  ref = str(tmp_path / 'ref')
  subprocess.run(_train_cmd(ref, data_dir, steps, steps), cwd=ROOT, env=env, check=True,
                 capture_output=True)
  killed = str(tmp_path / 'killed')
  proc = subprocess.Popen(_train_cmd(killed, data_dir, steps, 10), cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while not os.path.isdir(os.path.join(killed, 'checkpoints', '20')):
    assert time.time() < deadline and proc.poll() is None, 'no checkpoint before the kill'
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  last = checkpoint.Checkpointer(killed, read_only=True).latest_step()
  assert last is not None and last < steps, 'the run finished before it was killed'
  subprocess.run(_train_cmd(killed, data_dir, steps, 10), cwd=ROOT, env=env, check=True,
                 capture_output=True)
  _assert_same_params(_params(killed), _params(ref))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
  workdir = str(tmp_path / 'nan')
  cfg = lm_test_config(data_dir, steps=20, checkpoint_every=2, learning_rate=1e9,
                       warmup_steps=1, grad_clip=0.0)
  with pytest.raises(trainer.NonFiniteLossError, match='Non-finite loss') as err:
    trainer.train_and_evaluate(cfg, workdir)
  latest = checkpoint.Checkpointer(workdir, read_only=True).latest_step()
  assert f'last checkpoint (step {latest})' in str(err.value)
  params = _params(workdir)
  assert all(np.isfinite(p).all() for p in params)


def test_changed_model_config_is_refused(tmp_path, trained_workdir, data_dir):
  workdir = str(tmp_path / 'copy')
  shutil.copytree(trained_workdir, workdir)
  cfg = lm_test_config(data_dir, steps=30)
  cfg.model.d_model = 48
  with pytest.raises(checkpoint.CheckpointError, match='model.d_model: checkpoint has 64'):
    trainer.train_and_evaluate(cfg, workdir)


def test_config_diff_ignores_how_the_model_is_computed():
  """remat / attention_impl / delta_impl may change on resume (old checkpoints lack remat)."""
  saved = dict(d_model=64, attention_impl='auto')
  wanted = dict(d_model=64, attention_impl='xla', remat='block', delta_impl='pallas')
  assert checkpoint.model_config_diff(saved, wanted) == []
  assert checkpoint.model_config_diff(saved, dict(wanted, d_model=48)) == [
      'model.d_model: checkpoint has 64, config asks for 48']


def test_workdir_without_checkpoint(tmp_path, trained_workdir):
  with pytest.raises(checkpoint.CheckpointError, match='not a training workdir'):
    loading.load_model(str(tmp_path))
  workdir = str(tmp_path / 'nockpt')
  shutil.copytree(trained_workdir, workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints'))
  with pytest.raises(checkpoint.CheckpointError, match='No checkpoints in'):
    loading.load_model(workdir)
  with pytest.raises(checkpoint.CheckpointError, match='No checkpoint at step 7'):
    loading.load_model(trained_workdir, step=7)


@pytest.mark.parametrize('key,value,match', [
    ('model.num_kv_heads', 3, 'divisible by model.num_kv_heads'),
    ('mesh.data', 3, 'needs 3 devices but 8 are available'),
    ('data.batch_size', 4, 'Batch size 4 is not divisible by the data-parallel mesh size 8'),
    ('objective', 'nope', "Unknown objective 'nope'"),
])
def test_bad_config_values(tmp_path, data_dir, key, value, match):
  cfg = lm_test_config(data_dir)
  section, _, name = key.rpartition('.')
  (cfg[section] if section else cfg)[name] = value
  with pytest.raises(ValueError, match=match):
    trainer.train_and_evaluate(cfg, str(tmp_path / 'w'))


@pytest.mark.parametrize('flag,match', [
    ('--config.train.nope=1', 'Unknown config key in --config.train.nope'),
    ('--config.train.steps=abc', 'invalid literal'),
])
def test_bad_config_flags(tmp_path, flag, match):
  out = subprocess.run([sys.executable, 'train.py', '--config=configs/lm.py:test',
                        f'--workdir={tmp_path}', flag], cwd=ROOT, capture_output=True,
                       text=True, env=testlib.subprocess_env())
  assert out.returncode != 0
  assert match in out.stderr + out.stdout
  assert 'Traceback' not in out.stderr


def test_objective_with_extras_and_frozen_model(tmp_path, data_dir):
  """An objective may add trainable trees and freeze the model; load_model returns both."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from training import objectives  # pylint: disable=g-import-not-at-top

  if 'test_probe' not in objectives.names():
    @objectives.register('test_probe')
    def _probe(model, config):
      del config
      D, V = model.cfg.d_model, model.cfg.vocab_size

      def loss_fn(params, batch, rng):
        del rng
        out = model.apply({'params': params['model']}, batch['tokens'][:, :-1])
        logits = out.last_hidden_BxTxD @ params['probe']['w']
        return objectives.token_cross_entropy(logits, batch['tokens'][:, 1:],
                                              jnp.ones(logits.shape[:2]))

      return objectives.Objective(
          loss_fn=loss_fn, frozen=('model',),
          init_extras=lambda rng: {'probe': {'w': jax.random.normal(rng, (D, V)) * 0.02}})

  cfg = lm_test_config(data_dir, steps=4, checkpoint_every=4)
  cfg.objective = 'test_probe'
  workdir = str(tmp_path / 'probe')
  trainer.train_and_evaluate(cfg, workdir)
  loaded = loading.load_model(workdir)
  assert set(loaded.extras) == {'probe'}
  assert loaded.extras['probe']['w'].shape == (64, loaded.model.cfg.vocab_size)
  # The frozen model is its initialisation (up to ulps of jitted-vs-eager init; a single
  # update would move it by >= 1e-4).
  from training import train_state  # pylint: disable=g-import-not-at-top
  init = train_state.init_params(loaded.model, objectives.make_objective('test_probe',
                                                                         loaded.model, cfg),
                                 jax.random.key(cfg.seed))
  _assert_same_params(jax.tree.leaves(jax.device_get(loaded.params)),
                      jax.tree.leaves(jax.device_get(init['model'])), atol=1e-6)
  assert not np.allclose(loaded.extras['probe']['w'], init['probe']['w'])


def test_load_model_casts_to_bfloat16(trained_workdir):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  fp32 = loading.load_model(trained_workdir)
  bf16 = loading.load_model(trained_workdir, dtype='bfloat16')
  assert bf16.model.cfg.dtype == bf16.model.cfg.param_dtype == 'bfloat16'
  assert {x.dtype for x in jax.tree.leaves(bf16.params)} == {jnp.dtype(jnp.bfloat16)}
  toks = jnp.asarray([[1, 40, 41, 42]])
  a = fp32.model.apply({'params': fp32.params}, toks).logits_BxTxV
  b = bf16.model.apply({'params': bf16.params}, toks).logits_BxTxV
  assert b.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(a - b))) < 0.1 * float(jnp.max(jnp.abs(a)))
