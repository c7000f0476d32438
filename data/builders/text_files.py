"""TFDS builder `text_files`: one example per file matched by a user glob.

``TextFiles(glob='~/corpus/**/*.txt', data_dir=...)``. The glob is expanded
(``~``, made absolute) and matched with ``glob.glob(..., recursive=True)``;
folders are skipped. Paths are relative to the glob's fixed prefix (the folders
before the first wildcard), so the train/validation split (MD5 of the relative
path, see `data.builders.common`) does not depend on which other files match.

The builder config is named ``g<md5 of the absolute glob>``: two globs never
share prepared data. The files are read once, when the config is first
prepared; edits made later are not seen until that config folder
(``<data_dir>/text_files/g<hash>/``) is deleted.
"""

from __future__ import annotations

import dataclasses
import glob as globlib
import os
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds

from data.builders import common


def normalize_glob(pattern: str) -> str:
  """``~`` expanded and made absolute (relative globs use the cwd)."""
  return os.path.abspath(os.path.expanduser(pattern))


def glob_root(pattern: str) -> str:
  """Folder made of the components before the first wildcard."""
  parts = normalize_glob(pattern).split(os.sep)
  fixed = []
  for part in parts[:-1]:
    if globlib.has_magic(part):
      break
    fixed.append(part)
  return os.sep.join(fixed) or os.sep


def list_glob_files(pattern: str) -> tuple[str, list[str]]:
  """(root, sorted relative paths of the files the glob matches)."""
  pattern = normalize_glob(pattern)
  root = glob_root(pattern)
  paths = [p for p in globlib.glob(pattern, recursive=True) if os.path.isfile(p)]
  return root, sorted(common.to_relpath(p, root) for p in paths)


@dataclasses.dataclass(eq=False)
class TextFilesConfig(tfds.core.BuilderConfig):
  """Config holding the glob; build it with `TextFilesConfig.from_glob`."""

  glob: str = ''

  @classmethod
  def from_glob(cls, pattern: str) -> TextFilesConfig:
    if not pattern:
      raise ValueError('text_files needs a non-empty glob.')
    pattern = normalize_glob(pattern)
    return cls(name='g' + common.short_hash(pattern), glob=pattern,
               description=f'Files matching {pattern}')


class TextFiles(common.CodePathMixin, tfds.core.GeneratorBasedBuilder):
  """Text files matching a glob, one document per file."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'One document per file; 2% validation by MD5 of '
                            'the relative path (at least one file).'}

  def __init__(self, *, glob: str = '', config: Any = None, **kwargs: Any):
    """Pass ``glob=`` (or ``config=TextFilesConfig.from_glob(...)``)."""
    if glob:
      config = TextFilesConfig.from_glob(glob)
    if not isinstance(config, TextFilesConfig):
      raise ValueError('text_files needs glob= (the files to read), e.g. '
                       "TextFiles(glob='~/corpus/**/*.txt').")
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                 features=common.features())

  def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[Any]]:
    del dl_manager  # Local files only: nothing is downloaded.
    pattern = self.builder_config.glob
    root, relpaths = list_glob_files(pattern)
    if len(relpaths) < 2:
      raise ValueError(f'text_files glob {pattern!r} matches {len(relpaths)} '
                       'file(s); at least 2 are needed for train and '
                       'validation splits.')
    splits = common.split_by_path_hash(relpaths)
    return {name: self._generate_examples(root, paths)
            for name, paths in splits.items()}

  def _generate_examples(self, root: str, relpaths: list[str]
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    return common.generate_examples(root, relpaths)
