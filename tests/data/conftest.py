"""Shared fixtures for the data tests: small corpora, prepared data dirs."""

from __future__ import annotations

import dataclasses
import os
import random

import pytest

_WORDS = ('alpha', 'beta', 'gamma', 'delta', 'lambda', 'def', 'return',
          'class', 'import', 'yield', 'café', 'naïve', 'Grüße', '日本語', '→',
          '🙂', '<eos>', '\t', 'x = 1', 'print(x)')


def make_doc(i: int) -> str:
  """A distinct, deterministic document of 60..600 characters."""
  rng = random.Random(i)
  words = [rng.choice(_WORDS) for _ in range(rng.randint(10, 100))]
  return f'# doc {i:03d}\n' + ' '.join(words) + '\n'


@dataclasses.dataclass(frozen=True)
class Corpus:
  root: str
  glob: str
  docs: dict[str, str]  # '/'-separated path relative to root -> text


@pytest.fixture(scope='session')
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
  """40 .txt files (some in a subfolder) plus files the glob must skip."""
  root = tmp_path_factory.mktemp('corpus')
  docs = {}
  for i in range(40):
    relpath = f'sub/doc{i:03d}.txt' if i % 4 == 0 else f'doc{i:03d}.txt'
    docs[relpath] = make_doc(i)
  for relpath, text in docs.items():
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding='utf-8')
  (root / 'notes.md').write_text('# not a txt file\n', encoding='utf-8')
  (root / 'folder.txt').mkdir()  # A folder matching the glob is skipped.
  return Corpus(str(root), str(root / '**' / '*.txt'), docs)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
  """One TFDS data dir shared by the tests that only read."""
  return str(tmp_path_factory.mktemp('tfds_data'))


@pytest.fixture(scope='session')
def stdlib_texts() -> list[str]:
  """A few stdlib sources read straight from disk (for BPE training)."""
  import sysconfig
  root = sysconfig.get_paths()['stdlib']
  names = ['abc.py', 'bisect.py', 'colorsys.py', 'copy.py', 'fnmatch.py',
           'keyword.py', 'textwrap.py']
  texts = []
  for name in names:
    with open(os.path.join(root, name), encoding='utf-8') as f:
      texts.append(f.read())
  return texts


@pytest.fixture(scope='session')
def bpe(stdlib_texts: list[str]):
  from data.tokenizers import train_bpe
  return train_bpe(stdlib_texts, 400)
