"""train.py as two processes on this machine: jax.distributed over localhost, CPU collectives
through gloo, started from the environment exactly as the README's multi-host command does
(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID).

Against one uninterrupted single-process run with the same global batch (8 rows; 8 CPU
devices in both layouts), one workdir goes through every change of process layout:

  1 process:   steps 0-4     -> a checkpoint written by one process
  2 processes: steps 4-...   -> restore it; process 1 is SIGKILLed after the checkpoint of
                                step 8, then process 0 (it waits on a collective forever)
  2 processes: ...-16        -> both restarted: they resume from the newest checkpoint
  1 process:   a copy of the killed run's workdir resumes in one process -> 16
  sample.py (one process) on the two-process result

16 steps with a checkpoint every 4 and the eval at steps 10 and 16: every layout change above
still happens (a checkpoint written by two processes, one two-process eval, a resume in each
layout). The reference writes only its final checkpoint (each save costs about a CPU second
here); how often a run saves must not change its numbers, and this way a save that did would
show.

Every branch must give the single-process run's loss at every step, its eval losses, its
final parameters and (sample.py) its greedy tokens. The processes feed disjoint rows of the
global batch: had both read the same rows, the batch, and so the losses, would differ.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from decoding import Models, registry, run_decoder
import testlib
from testlib import lm_test_config
from training import metrics, trainer
from workdir import checkpoint, loading

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 16
# fp32. Two processes sum gradients in another order than one (gloo all-reduce): measured
# differences after 24 steps (fewer steps accumulate less) are ~1.3e-7 relative in the losses
# and ~1.2e-7 absolute in the parameters; any wrong row, step or data position moves them by
# far more.
METRICS_RTOL, PARAM_ATOL = 2e-6, 2e-6
SETTINGS = dict(steps=STEPS, checkpoint_every=4, log_every=1)


def _train_cmd(workdir, data_dir):
  return [sys.executable, 'train.py', '--config=configs/lm.py:test', f'--workdir={workdir}',
          f'--config.data.data_dir={data_dir}', '--config.data.batch_size=8',
          *[f'--config.train.{k}={v}' for k, v in SETTINGS.items()],
          '--config.train.progress_bar=False']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start_two(workdir, data_dir, logs):
  """Two train.py processes of one job, 4 CPU devices each (8 in all); (process, log file)."""
  port, procs = _free_port(), []
  launch = len(list(logs.iterdir())) // 2
  for i in range(2):
    env = testlib.subprocess_env(concurrent=True,
                                 XLA_FLAGS='--xla_force_host_platform_device_count=4',
                                 JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
                                 JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(i))
    log = open(logs / f'launch{launch}_process{i}.log', 'w')
    procs.append((subprocess.Popen(_train_cmd(workdir, data_dir), cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT), log))
  return procs


def _output(procs, tail=3000):
  out = []
  for _, log in procs:
    if not log.closed:
      log.flush()
    with open(log.name) as f:
      text = f.read()
      out.append(text[-tail:] if tail else text)
  return '\n---\n'.join(out)


def _wait(procs, timeout=300):
  for p, _ in procs:
    try:
      p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      for q, _ in procs:
        q.kill()
      raise AssertionError('train.py did not finish:\n' + _output(procs)) from None
  assert all(p.returncode == 0 for p, _ in procs), _output(procs)
  for _, log in procs:
    log.close()


def _curve(workdir):
  """{(split, step, metric): value} for the loss, gradient norm and bits per byte, from the
  last record of each step (a resumed run logs steps again)."""
  return {(r['split'], r['step'], k): r[k] for r in metrics.read_metrics(workdir)
          for k in ('loss', 'grad_norm', 'bits_per_byte') if k in r}


def _params(workdir):
  return jax.tree.leaves(jax.device_get(loading.load_model(workdir).params))


@pytest.mark.slow
def test_two_processes_train_restore_and_resume_like_one(tmp_path, data_dir):
  ref = str(tmp_path / 'one')
  trainer.train_and_evaluate(lm_test_config(data_dir, **dict(SETTINGS, checkpoint_every=STEPS)),
                             ref)
  work, logs = str(tmp_path / 'two'), tmp_path / 'logs'
  logs.mkdir()
  trainer.train_and_evaluate(lm_test_config(data_dir, **SETTINGS, stop_after_steps=4), work)

  procs = _start_two(work, data_dir, logs)
  deadline = time.time() + 240
  while not os.path.isdir(os.path.join(work, 'checkpoints', '8')):
    assert time.time() < deadline and all(p.poll() is None for p, _ in procs), (
        'no checkpoint at step 8 before the kill:\n' + _output(procs))
    time.sleep(0.05)
  procs[1][0].send_signal(signal.SIGKILL)
  procs[1][0].wait()
  time.sleep(1.0)
  procs[0][0].send_signal(signal.SIGKILL)  # blocked in a collective with the dead process
  procs[0][0].wait()
  started = _output(procs, tail=None)
  assert 'Resumed from step 4' in started
  assert 'Process 0 of 2: rows 0-3' in started and 'Process 1 of 2: rows 4-7' in started
  last = checkpoint.Checkpointer(work, read_only=True).latest_step()
  assert last is not None and 8 <= last < STEPS, f'killed at step {last}'
  copy = str(tmp_path / 'copy')
  shutil.copytree(work, copy)

  procs = _start_two(work, data_dir, logs)
  _wait(procs)
  assert f'Resumed from step {last}' in _output(procs, tail=None)
  trainer.train_and_evaluate(lm_test_config(data_dir, **SETTINGS), copy)

  want = _curve(ref)
  assert {('train', STEPS, 'loss'), ('eval', STEPS, 'bits_per_byte')} <= set(want)
  ref_params = _params(ref)
  for name, workdir in (('two processes', work), ('two, then one', copy)):
    got = _curve(workdir)
    assert set(got) == set(want), name
    keys = sorted(want)
    np.testing.assert_allclose([got[k] for k in keys], [want[k] for k in keys],
                               rtol=METRICS_RTOL, atol=0, err_msg=name)
    for a, b in zip(_params(workdir), ref_params, strict=True):
      np.testing.assert_allclose(a, b, rtol=0, atol=PARAM_ATOL, err_msg=name)

  # sample.py restores the two-process checkpoint in one process and decodes like the
  # single-process model.
  env = testlib.subprocess_env()
  sampled = subprocess.run([sys.executable, 'sample.py', f'--workdir={work}',
                            '--prompt=def main(', '--max_new_tokens=12', '--json'],
                           cwd=ROOT, capture_output=True, text=True, env=env)
  assert sampled.returncode == 0, sampled.stderr
  row = json.loads(next(l for l in sampled.stdout.splitlines() if l.startswith('{')))
  loaded = loading.load_model(ref)
  tok = loaded.tokenizer
  expected, _ = run_decoder(registry.build('ar'), Models(loaded.model),
                            {'target': loaded.params}, [tok.encode('def main(', add_bos=True)],
                            max_new_tokens=12, cache_size=64, eos_id=tok.eos_id,
                            pad_id=tok.pad_id)
  assert row['token_ids'] == expected[0].tokens
