"""Helpers shared by the local-file TFDS builders (`python_stdlib`, `text_files`).

A document is one file: ``{'text': str, 'path': str}`` where ``path`` is the
file's path relative to the corpus root, '/'-separated. Files are decoded as
UTF-8 with ``errors='replace'`` so any bytes give a valid str.

Splits are fixed by the file's relative path alone (never by Python's salted
`hash`): a file is in validation iff the MD5 of its relative path, read as a
fraction in [0, 1), is below `VALIDATION_FRACTION`. Adding or removing other
files never moves a file between splits. If that leaves validation empty and
there are at least two files, the file with the smallest hash goes to
validation (the first one a larger fraction would pick), so small corpora still
get a validation split.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import pathlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import tensorflow_datasets as tfds

VALIDATION_FRACTION = 0.02


class CodePathMixin:
  """Gives a builder a plain `code_path`; list it before the TFDS base class.

  TFDS 4.9.10's `DatasetBuilder.code_path` evaluates
  ``importlib_resources.abc.Traversable`` for any builder defined inside a
  package, and `importlib_resources` is only a TFDS dependency on Python < 3.9,
  so `download_and_prepare` fails with ModuleNotFoundError on 3.11 unless that
  package happens to be installed. Our builders need the path only for the
  (absent) checksums file next to the module.
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> pathlib.Path:
    return pathlib.Path(inspect.getfile(cls))


def features() -> tfds.features.FeaturesDict:
  """Features of every document: the file text and its relative path."""
  return tfds.features.FeaturesDict({'text': tfds.features.Text(),
                                     'path': tfds.features.Text()})


def path_fraction(relpath: str) -> float:
  """Deterministic number in [0, 1) from the MD5 of a relative path."""
  digest = hashlib.md5(relpath.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64


def split_by_path_hash(relpaths: Iterable[str],
                       fraction: float = VALIDATION_FRACTION
                       ) -> dict[str, list[str]]:
  """Sorted relative paths -> ``{'train': [...], 'validation': [...]}``."""
  relpaths = sorted(set(relpaths))
  splits: dict[str, list[str]] = {'train': [], 'validation': []}
  for relpath in relpaths:
    key = 'validation' if path_fraction(relpath) < fraction else 'train'
    splits[key].append(relpath)
  if not splits['validation'] and len(relpaths) >= 2:
    first = min(relpaths, key=path_fraction)
    splits['train'].remove(first)
    splits['validation'].append(first)
  return splits


def read_text(path: str) -> str:
  """File contents as str; undecodable bytes become U+FFFD."""
  with open(path, 'rb') as f:
    return f.read().decode('utf-8', errors='replace')


def to_relpath(path: str, root: str) -> str:
  """``path`` relative to ``root`` with '/' separators."""
  return os.path.relpath(path, root).replace(os.sep, '/')


def generate_examples(root: str, relpaths: Sequence[str]
                      ) -> Iterator[tuple[str, dict[str, Any]]]:
  """Yields ``(key, example)`` for each file; the key is its relative path."""
  for relpath in relpaths:
    text = read_text(os.path.join(root, *relpath.split('/')))
    yield relpath, {'text': text, 'path': relpath}


def short_hash(text: str, n: int = 12) -> str:
  """First ``n`` hex digits of the MD5 of ``text`` (for config names)."""
  return hashlib.md5(text.encode('utf-8')).hexdigest()[:n]
