"""Random-access text sources: built-in corpora and prepared TFDS datasets.

`load_source(name, split, data_dir)` returns a `TextSource`: ``len(src)`` and
``src[i] -> {'text': str}``, the random-access protocol grain's
``MapDataset.source`` takes. Nothing is downloaded and TensorFlow is never
imported.

* ``'python_stdlib'`` and ``'text_files'`` (with ``glob=``) are the TFDS builders
  of `data.builders`. The first call prepares them into
  ``<data_dir>/<name>/<config>/<version>/`` in array_record format; later calls
  reuse it.
* Any other name goes to ``tfds.builder(name, data_dir=...)``; it must already
  be prepared there in array_record (or parquet) format, or a FileNotFoundError
  says how to prepare it.

TFDS without TensorFlow (checked with tfds 4.9.10, no TF installed):
``download_and_prepare(file_format='array_record')`` and ``as_data_source`` work
through TFDS's own writer and reader; no fallback writer is needed. One TFDS
bug had to be worked around (see `data.builders.common.CodePathMixin`):
`DatasetBuilder.code_path` needs the `importlib_resources` package, which TFDS
declares only for Python < 3.9. Text features come back as UTF-8 bytes without
TF; `TextSource` decodes them (``errors='replace'``).

Data dir: the ``data_dir`` argument, else ``$LEAPFROG_DATA_DIR``, else
``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``.

Concurrent first use: TFDS writes into ``incomplete.*`` and renames the
finished folder into place; on top of that `prepare` holds an exclusive
``fcntl`` lock on ``<data_dir>/<name>/<config>/.<version>.lock`` and re-checks
after taking it, so two processes never prepare the same config at once and a
reader never sees a half-written folder.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import tensorflow_datasets as tfds

try:
  import fcntl
except ImportError:  # Windows: no lock; TFDS's rename still keeps data whole.
  fcntl = None

from data.builders import PythonStdlib, TextFiles

ENV_DATA_DIR = 'LEAPFROG_DATA_DIR'
BUILTIN = ('python_stdlib', 'text_files')


def resolve_data_dir(data_dir: str = '') -> str:
  """The data dir to use (argument > $LEAPFROG_DATA_DIR > $TFDS_DATA_DIR >
  ~/tensorflow_datasets), with ``~`` expanded."""
  chosen = (data_dir or os.environ.get(ENV_DATA_DIR)
            or os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets')
  return os.path.abspath(os.path.expanduser(chosen))


def builtin_builder(name: str, data_dir: str = '', *,
                    glob: str = '') -> tfds.core.DatasetBuilder:
  """Builder of a built-in corpus (not prepared by this call)."""
  kwargs = dict(data_dir=resolve_data_dir(data_dir), file_format='array_record')
  if name == 'python_stdlib':
    return PythonStdlib(**kwargs)
  if name == 'text_files':
    if not glob:
      raise ValueError("name='text_files' needs glob= (e.g. '~/corpus/*.txt').")
    return TextFiles(glob=glob, **kwargs)
  raise ValueError(f'{name!r} is not a built-in corpus; those are {BUILTIN}.')


@contextlib.contextmanager
def _exclusive_lock(path: str) -> Iterator[None]:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if fcntl is None:
    yield
    return
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepare(name: str, data_dir: str = '', *,
            glob: str = '') -> tfds.core.DatasetBuilder:
  """Prepares a built-in corpus once (process-safe); returns its builder."""
  builder = builtin_builder(name, data_dir, glob=glob)
  if builder.is_prepared():
    return builder
  version_dir = os.fspath(builder.data_path)
  lock = os.path.join(os.path.dirname(version_dir),
                      f'.{os.path.basename(version_dir)}.lock')
  with _exclusive_lock(lock):
    builder = builtin_builder(name, data_dir, glob=glob)  # May be ready now.
    if not builder.is_prepared():
      builder.download_and_prepare()
      builder = builtin_builder(name, data_dir, glob=glob)
  return builder


def _not_prepared_message(name: str, data_dir: str, version: Any) -> str:
  return (
      f'TFDS dataset {name!r} (version {version}) is not prepared under '
      f'{data_dir!r}, and Leapfrog never downloads at run time. Prepare it once '
      'where there is network, in array_record format:\n'
      f'  tfds build {name} --data_dir=DIR --file_format=array_record\n'
      f"  (or tfds.builder({name!r}, data_dir=DIR, file_format='array_record')"
      '.download_and_prepare())\n'
      f'then copy DIR here and pass data_dir=DIR or set ${ENV_DATA_DIR}=DIR.')


def _tfds_source(name: str, split: str, data_dir: str) -> Sequence[Any]:
  """Random-access source of an already prepared TFDS dataset."""
  root = resolve_data_dir(data_dir)
  try:
    builder = tfds.builder(name, data_dir=root)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
        f'Unknown dataset {name!r}: not a built-in corpus {BUILTIN}, not a '
        f'registered TFDS dataset, and not prepared under {root!r}.') from e
  if not builder.is_prepared():
    raise FileNotFoundError(_not_prepared_message(name, root, builder.version))
  random_access = tfds.core.file_adapters.FileFormat.with_random_access()
  if not set(builder.info.available_file_formats()) & random_access:
    raise ValueError(
        f'{name!r} is prepared under {builder.data_dir!r} as '
        f'{builder.info.file_format}, which has no random access. Rebuild it '
        'with file_format=array_record:\n'
        + _not_prepared_message(name, root, builder.version).split('\n', 1)[1])
  return builder.as_data_source(split=split)


def _lookup(record: Any, key: str) -> Any:
  """``record['a']['b']`` for key 'a/b'."""
  for part in key.split('/') if key else ():
    if not isinstance(record, Mapping) or part not in record:
      keys = list(record) if isinstance(record, Mapping) else type(record)
      raise KeyError(f'Text key {key!r} not in record (has {keys}).')
    record = record[part]
  return record


class TextSource:
  """Random-access documents ``{'text': str}`` (grain RandomAccessDataSource).

  Args:
    records: sequence of records (e.g. a TFDS ArrayRecordDataSource).
    text_key: key of the text in each record ('a/b' for nested dicts).
    description: shown by ``repr``.
  """

  def __init__(self, records: Sequence[Any], text_key: str = 'text',
               description: str = '') -> None:
    self._records = records
    self._text_key = text_key
    self._description = description

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict[str, str]:
    value = _lookup(self._records[index], self._text_key)
    if isinstance(value, bytes):
      value = value.decode('utf-8', errors='replace')
    return {'text': str(value)}

  def __repr__(self) -> str:
    return (f'TextSource({self._description}, text_key={self._text_key!r}, '
            f'len={len(self)})')


def load_source(name: str, split: str, data_dir: str = '', *, glob: str = '',
                text_key: str = 'text') -> TextSource:
  """Random-access documents of one split, offline and without TensorFlow.

  Args:
    name: 'python_stdlib', 'text_files', or any TFDS name (with optional
      config/version, e.g. 'wikipedia/20230601.en').
    split: split name; TFDS slicing such as 'train[:10%]' works.
    data_dir: root data dir ('' = default, see the module docstring).
    glob: files for 'text_files'.
    text_key: record key holding the text (built-in corpora use 'text').
  """
  if name in BUILTIN:
    builder = prepare(name, data_dir, glob=glob)
    records = builder.as_data_source(split=split)
  else:
    records = _tfds_source(name, split, data_dir)
  return TextSource(records, text_key, f'{name}:{split}')
