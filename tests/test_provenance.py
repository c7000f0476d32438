"""benchmarks.common.provenance: every results file says which commit of the code ran."""

import os
import re
import subprocess

from benchmarks import common


def _git(root, *args):
  return subprocess.run(['git', '-C', str(root), *args], check=True, capture_output=True,
                        text=True).stdout.strip()


def test_commit_and_dirty_flag(tmp_path, monkeypatch):
  monkeypatch.delenv(common.COMMIT_ENV, raising=False)
  repo = tmp_path / 'repo'
  (repo / 'benchmarks' / 'results').mkdir(parents=True)
  (repo / 'code.py').write_text('x = 1\n')
  _git(repo, 'init', '-q')
  _git(repo, 'add', '.')
  _git(repo, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'one')
  sha = _git(repo, 'rev-parse', 'HEAD')
  assert common.git_commit(str(repo)) == f'{sha[:12]} (clean)'
  # What the benchmarks write does not make the code dirty ...
  (repo / 'benchmarks' / 'results' / 'new.md').write_text('# table\n')
  assert common.git_commit(str(repo)) == f'{sha[:12]} (clean)'
  # ... a changed or a new source file does.
  (repo / 'code.py').write_text('x = 2\n')
  assert common.git_commit(str(repo)) == f'{sha[:12]} + uncommitted changes (dirty)'
  _git(repo, 'checkout', '--', 'code.py')
  (repo / 'other.py').write_text('y = 1\n')
  assert 'dirty' in common.git_commit(str(repo))


def test_without_git_the_commit_comes_from_the_environment(tmp_path, monkeypatch):
  monkeypatch.delenv(common.COMMIT_ENV, raising=False)
  assert common.git_commit(str(tmp_path)).startswith('unknown')
  monkeypatch.setenv(common.COMMIT_ENV, 'abc123')
  assert common.git_commit(str(tmp_path)).startswith('abc123 ')


def test_provenance_lists_device_versions_date_commit_and_command():
  lines = common.provenance().splitlines()
  keys = [line.split(':', 1)[0] for line in lines]
  assert keys == ['- device', '- host', '- versions', '- date', '- commit', '- command']
  head = _git(os.path.dirname(common.RESULTS_DIR), 'rev-parse', 'HEAD')
  assert lines[4].startswith(f'- commit: {head[:12]}')
  # the CPU's model, and its last-level cache where Linux's sysfs tells it
  host = lines[1].removeprefix('- host: ')
  assert host and host != 'unknown'
  if os.path.isdir('/sys/devices/system/cpu/cpu0/cache'):
    assert re.search(r', last-level cache \d+ (MiB|KiB)$', host), host


def test_the_sent_commit_wins_over_a_stale_checkout(tmp_path, monkeypatch):
  # A lent machine's copy carried a .git at an older HEAD, with the newer code as changes.
  monkeypatch.delenv(common.COMMIT_ENV, raising=False)
  repo = tmp_path / 'repo'
  repo.mkdir()
  (repo / 'code.py').write_text('x = 1\n')
  _git(repo, 'init', '-q')
  _git(repo, 'add', '.')
  _git(repo, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'one')
  (repo / 'code.py').write_text('x = 2\n')
  assert 'dirty' in common.git_commit(str(repo))
  monkeypatch.setenv(common.COMMIT_ENV, 'feedbeef1234')
  assert common.git_commit(str(repo)) == f'feedbeef1234 (from ${common.COMMIT_ENV})'
