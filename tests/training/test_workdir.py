"""One run per workdir (a live holder refuses the second, a dead one blocks nothing), workdirs
that cannot be directories, and train settings that describe no run."""

import os
import signal
import subprocess
import sys
import time

import pytest

import testlib
from testlib import lm_test_config
from training import trainer
from workdir import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_second_run_is_refused_while_the_first_lives_and_resumes_after_a_kill(tmp_path,
                                                                             data_dir):
  workdir = str(tmp_path / 'w')
  first = subprocess.Popen(
      [sys.executable, 'train.py', '--config=configs/lm.py:test', f'--workdir={workdir}',
       f'--config.data.data_dir={data_dir}', '--config.data.batch_size=8',
       '--config.train.steps=100000', '--config.train.checkpoint_every=5',
       '--config.train.eval_every=100000'], cwd=ROOT, env=testlib.subprocess_env(concurrent=True),
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 180
    while not os.path.isdir(os.path.join(workdir, 'checkpoints', '5')):
      assert time.time() < deadline and first.poll() is None, 'the first run did not start'
      time.sleep(0.1)
    second = lm_test_config(data_dir, steps=8, learning_rate=0.1)
    with pytest.raises(Exception, match=f'in use by another run.*pid {first.pid}') as err:
      trainer.train_and_evaluate(second, workdir)
    from workdir import lock as workdir_lib  # pylint: disable=g-import-not-at-top
    assert isinstance(err.value, workdir_lib.WorkdirInUseError)
    assert '--config.train.steps=100000' in str(err.value)  # names the holder's command
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  # The dead run's lock file is still there; it must not block the resume.
  assert os.path.exists(os.path.join(workdir, 'lock'))
  last = checkpoint.Checkpointer(workdir, read_only=True).latest_step()
  out = trainer.train_and_evaluate(lm_test_config(data_dir, steps=last + 2), workdir)
  assert out['step'] == last + 2


def test_lock_names_the_live_holder_and_is_released(tmp_path):
  from workdir import lock as workdir_lib  # pylint: disable=g-import-not-at-top
  workdir = workdir_lib.prepare(str(tmp_path / 'w'))
  with workdir_lib.lock(workdir):
    with pytest.raises(workdir_lib.WorkdirInUseError, match=f'pid {os.getpid()} on '):
      with workdir_lib.lock(workdir):
        pass
  with workdir_lib.lock(workdir):  # released by the first block
    pass


@pytest.mark.parametrize('steps', [0, -5])
def test_steps_that_describe_no_run_are_refused(tmp_path, data_dir, steps):
  workdir = str(tmp_path / 'w')
  with pytest.raises(ValueError, match=f'train.steps must be an integer >= 1, got {steps}'):
    trainer.train_and_evaluate(lm_test_config(data_dir, steps=steps), workdir)
  assert not os.path.exists(workdir), 'nothing is written for a refused run'


def test_workdir_that_is_or_lies_under_a_file_is_refused(tmp_path, data_dir):
  (tmp_path / 'f').write_text('x')
  for path, match in ((tmp_path / 'f', 'is a file'),
                      (tmp_path / 'f' / 'sub' / 'w', r'lies under .*f, which is a file')):
    with pytest.raises(ValueError, match=match):
      trainer.train_and_evaluate(lm_test_config(data_dir, steps=2), str(path))


# Each: the arguments after train.py, the one line expected on stderr.
TRAIN_CLI_ERRORS = [
    (['--config=configs/lm.py:nope', '--workdir={tmp}/w'],
     "--config=configs/lm.py:nope: ValueError: Unknown size 'nope'"),
    (['--config=configs/no_such_file.py', '--workdir={tmp}/w'],
     "the config file 'configs/no_such_file.py' does not exist"),
    (['--config=configs/lm.py:test', '--workdir={tmp}/file'], 'is a file, not a directory'),
    (['--config=configs/lm.py:test', '--workdir={tmp}/file/sub'], 'which is a file'),
    (['--config=configs/lm.py:test', '--workdir={tmp}/w', '--config.train.steps=0'],
     'train.steps must be an integer >= 1, got 0'),
    (['--config=configs/lm.py:test', '--workdir={tmp}/w', '--config.train.steps=-2'],
     'train.steps must be an integer >= 1, got -2'),
]


@pytest.mark.parametrize('args,match', TRAIN_CLI_ERRORS,
                         ids=['preset', 'no_config', 'file', 'under_file', 'steps0', 'steps-2'])
def test_train_cli_errors_are_one_line_with_exit_code_2(tmp_path, args, match):
  (tmp_path / 'file').write_text('not a directory')
  out = subprocess.run([sys.executable, 'train.py', *(a.format(tmp=tmp_path) for a in args)],
                       cwd=ROOT, env=testlib.subprocess_env(), capture_output=True, text=True)
  assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
  assert out.stderr.count('\n') == 1 and out.stderr.startswith('error: '), out.stderr[-2000:]
  assert match in out.stderr
  assert not os.path.exists(tmp_path / 'w'), 'nothing is written for a refused run'
