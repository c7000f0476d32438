"""TFDS builder `python_stdlib`: the running interpreter's standard library.

One example per ``.py`` file under ``sysconfig.get_paths()['stdlib']``, leaving
out every folder named in `EXCLUDED_DIRS` (test suites such as ``test/``,
``unittest/test/``, ``lib2to3/tests/``, ``idlelib/idle_test/``, and
``site-packages``). Features ``{'text': Text, 'path': Text}``; splits
``train`` / ``validation`` by the MD5 of the relative path (see
`data.builders.common`). The builder config is named after the interpreter
(e.g. ``cpython3_11_7_<hash of the stdlib path>``) so interpreters that share a
data_dir never share prepared data.

About 730 files / 12 MB for CPython 3.11; preparing takes well under a
second to a few seconds.
Prepare and read through `data.sources` (array_record, no TensorFlow).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds

from data.builders import common

EXCLUDED_DIRS = frozenset({'test', 'tests', 'idle_test', 'site-packages',
                           'dist-packages', '__pycache__'})


def stdlib_root() -> str:
  """The running interpreter's standard library folder (symlinks resolved)."""
  return os.path.realpath(sysconfig.get_paths()['stdlib'])


def list_stdlib_files(root: str) -> list[str]:
  """Sorted '/'-separated relative paths of the corpus files under ``root``."""
  relpaths = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
    relpaths.extend(common.to_relpath(os.path.join(dirpath, f), root)
                    for f in filenames if f.endswith('.py'))
  return sorted(relpaths)


def config_name() -> str:
  """Config name for the running interpreter, e.g. ``cpython3_11_7_1a2b3c4d``."""
  v = sys.version_info
  return (f'{sys.implementation.name}{v.major}_{v.minor}_{v.micro}_'
          f'{common.short_hash(stdlib_root(), 8)}')


class PythonStdlib(common.CodePathMixin, tfds.core.GeneratorBasedBuilder):
  """Source files of the running interpreter's standard library, no tests."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Stdlib .py files without test folders; 2% '
                            'validation by MD5 of the relative path.'}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(
      name=config_name(),
      description=f'Python {sys.version.split()[0]} stdlib at {stdlib_root()}')]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=common.features(),
        homepage='https://docs.python.org/3/library/',
        license='PSF-2.0')

  def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[Any]]:
    del dl_manager  # Local files only: nothing is downloaded.
    root = stdlib_root()
    splits = common.split_by_path_hash(list_stdlib_files(root))
    return {name: self._generate_examples(root, relpaths)
            for name, relpaths in splits.items()}

  def _generate_examples(self, root: str, relpaths: list[str]
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    return common.generate_examples(root, relpaths)
