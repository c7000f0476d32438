"""Tests for the TFDS builders and data.sources.load_source (no TF, offline)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import sysconfig
import textwrap
import threading

import pytest

from data import sources
from data.builders import split_by_path_hash


def _paths(source) -> list[str]:
  """Relative paths of every record of a TextSource over a built-in corpus."""
  records = source._records  # The TFDS data source; records carry 'path'.
  return [records[i]['path'].decode() for i in range(len(records))]


def _texts_by_path(name, data_dir, glob='') -> dict[str, dict[str, str]]:
  """split -> {relpath: text} through load_source."""
  out = {}
  for split in ('train', 'validation'):
    src = sources.load_source(name, split, data_dir, glob=glob)
    out[split] = {p: src[i]['text'] for i, p in enumerate(_paths(src))}
  return out


def test_python_stdlib_excludes_tests_and_splits_by_path(tmp_path):
  by_split = _texts_by_path('python_stdlib', str(tmp_path / 'a'))
  train, valid = set(by_split['train']), set(by_split['validation'])
  assert train and valid and not train & valid
  assert 0.005 < len(valid) / (len(train) + len(valid)) < 0.05
  every = train | valid
  for relpath in every:
    parts = relpath.split('/')
    assert relpath.endswith('.py')
    assert not {'test', 'tests', 'idle_test', 'site-packages'} & set(parts)
  # Independent listing of the stdlib with the documented exclusions.
  root = pathlib.Path(sysconfig.get_paths()['stdlib']).resolve()
  expected = {p.relative_to(root).as_posix() for p in root.rglob('*.py')
              if not {'test', 'tests', 'idle_test', 'site-packages',
                      'dist-packages'} & set(p.relative_to(root).parts)}
  assert every == expected
  assert {'os.py', 'json/__init__.py', 'asyncio/tasks.py'} <= every
  os_split = 'train' if 'os.py' in train else 'validation'
  assert by_split[os_split]['os.py'] == (root / 'os.py').read_text('utf-8')
  # Preparing again elsewhere gives the same split.
  again = _texts_by_path('python_stdlib', str(tmp_path / 'b'))
  assert set(again['train']) == train and set(again['validation']) == valid


def test_text_files_reads_glob(corpus, data_dir):
  by_split = _texts_by_path('text_files', data_dir, corpus.glob)
  train, valid = by_split['train'], by_split['validation']
  assert valid and train and not set(train) & set(valid)
  assert {**train, **valid} == corpus.docs  # Same paths and texts; no decoys.


def test_split_depends_only_on_own_path():
  paths = [f'dir{i % 7}/file{i}.py' for i in range(2000)]
  full = split_by_path_hash(paths)
  assert 20 < len(full['validation']) < 60  # About 2% of 2000.
  subset = set(paths[::3])
  part = split_by_path_hash(sorted(subset, reverse=True))
  assert part['validation']  # Not the small-corpus rule below.
  for name in ('train', 'validation'):
    assert set(part[name]) == set(full[name]) & subset
  tiny = split_by_path_hash(['b.txt', 'a.txt'])  # Validation never empty.
  assert len(tiny['train']) == len(tiny['validation']) == 1


def test_text_files_decodes_bad_bytes_and_globs_do_not_collide(tmp_path):
  root = tmp_path / 'mixed'
  root.mkdir()
  (root / 'a.txt').write_bytes(b'ok \xff\xfe bytes')
  (root / 'b.txt').write_text('plain')
  (root / 'c.md').write_text('markdown one')
  (root / 'd.md').write_text('markdown two')
  dd = str(tmp_path / 'dd')
  txt = _texts_by_path('text_files', dd, str(root / '*.txt'))
  md = _texts_by_path('text_files', dd, str(root / '*.md'))
  assert {**txt['train'], **txt['validation']} == {
      'a.txt': 'ok \ufffd\ufffd bytes', 'b.txt': 'plain'}
  assert {**md['train'], **md['validation']} == {
      'c.md': 'markdown one', 'd.md': 'markdown two'}
  configs = [d for d in os.listdir(os.path.join(dd, 'text_files'))
             if not d.startswith('.')]
  assert len(configs) == 2


def test_text_files_errors(tmp_path):
  (tmp_path / 'one.txt').write_text('only file')
  with pytest.raises(ValueError, match='at least 2'):
    sources.load_source('text_files', 'train', str(tmp_path / 'dd'),
                        glob=str(tmp_path / '*.txt'))
  with pytest.raises(ValueError, match='glob'):
    sources.load_source('text_files', 'train', str(tmp_path / 'dd'))


def test_unprepared_tfds_dataset_gives_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"'mnist'[\s\S]*tfds build"):
    sources.load_source('mnist', 'train', str(tmp_path))
  with pytest.raises(ValueError, match='no_such_dataset_xyz'):
    sources.load_source('no_such_dataset_xyz', 'train', str(tmp_path))


def test_prepared_builtin_also_reads_via_tfds_data_source(corpus, data_dir):
  from data.builders import TextFiles
  sources.prepare('text_files', data_dir, glob=corpus.glob)
  builder = TextFiles(glob=corpus.glob, data_dir=data_dir)
  records = builder.as_data_source(split='validation')
  direct = sources.load_source('text_files', 'validation', data_dir,
                               glob=corpus.glob)
  assert [r['text'].decode() for r in records] == [
      direct[i]['text'] for i in range(len(direct))]
  # And a TFDS name that is not built in, read from where it is prepared.
  via_tfds = sources.load_source(f'text_files/{builder.builder_config.name}',
                                 'validation', data_dir)
  assert [via_tfds[i]['text'] for i in range(len(via_tfds))] == [
      direct[i]['text'] for i in range(len(direct))]


def test_concurrent_prepare_is_safe(tmp_path, corpus):
  dd = str(tmp_path / 'dd')
  errors = []

  def work():
    try:
      sources.prepare('text_files', dd, glob=corpus.glob)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=work) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors
  (config_dir,) = (tmp_path / 'dd' / 'text_files').iterdir()
  assert sorted(p.name for p in config_dir.iterdir()
                if not p.name.startswith('.')) == ['1.0.0']
  texts = _texts_by_path('text_files', dd, corpus.glob)
  assert {**texts['train'], **texts['validation']} == corpus.docs


def test_no_tensorflow_after_prepare_and_read(tmp_path, corpus):
  from data import pipeline, tokenizers
  cfg = pipeline.DataConfig(name='text_files', glob=corpus.glob,
                            data_dir=str(tmp_path), seq_len=8, batch_size=2)
  next(pipeline.make_train_iterator(cfg, tokenizers.ByteTokenizer()))
  assert 'tensorflow' not in sys.modules


@pytest.mark.slow
def test_no_tensorflow_import(tmp_path, corpus):
  """A fresh interpreter imports, prepares, reads and batches without TF."""
  code = textwrap.dedent(f'''
      import sys
      attempts = []
      class Spy:
        def find_spec(self, name, path=None, target=None):
          if name.split('.')[0] == 'tensorflow':
            attempts.append(name)
          return None
      sys.meta_path.insert(0, Spy())
      import data
      assert 'tensorflow' not in sys.modules
      cfg = data.DataConfig(name='text_files', glob={corpus.glob!r},
                            data_dir={str(tmp_path)!r}, seq_len=8,
                            batch_size=2)
      batch = next(data.make_train_iterator(cfg, data.ByteTokenizer()))
      assert batch['tokens'].shape == (2, 9)
      assert 'tensorflow' not in sys.modules, 'tensorflow imported'
      print('TF_IMPORT_ATTEMPTS', attempts)
  ''')
  root = str(pathlib.Path(__file__).resolve().parents[2])
  result = subprocess.run([sys.executable, '-c', code], cwd=root,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'TF_IMPORT_ATTEMPTS' in result.stdout
