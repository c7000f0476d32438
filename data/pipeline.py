"""grain input pipelines: packed token batches for training and evaluation.

Training (`make_train_iterator`), per process::

  load_source(train_split)                      documents {'text': str}
  -> MapDataset.source -> .shuffle(seed) -> .repeat()   new order each epoch
  -> [process_index::process_count]             this process's documents
  -> .map(tokenize)                             int32 [<bos> text <eos>]
  -> .to_iter_dataset(ReadOptions(read_threads))
  -> PackIterDataset(seq_len + 1)               concatenate, cut, no padding
  -> .batch(batch_size // process_count)        {'tokens': int32 [B, seq_len+1]}

Rows are ``seq_len + 1`` long so that ``inputs = tokens[:, :-1]`` and
``targets = tokens[:, 1:]`` are both ``[B, seq_len]``. There is no padding and
there are no segment ids; see `data.packing` for why.

Deterministic guarantees:

* Same config, tokenizer, corpus and (process_index, process_count) -> the
  same batches, in every run, on every machine; `read_threads` does not change
  them.
* Epoch ``e`` visits every document once, in an order fixed by
  (shuffle_seed, e). The user seed is hashed first, because grain seeds epoch
  ``e`` with ``seed + e`` and seeds 0 and 1 would otherwise share epochs.
* Process ``p`` of ``P`` takes positions ``p, p+P, ...`` of that order, so the
  processes' documents are disjoint and together are exactly the documents of
  the single-process order.
* `TrainIterator.get_state()` is a small JSON-serialisable dict;
  ``set_state`` on a fresh iterator built from the same config continues
  exactly where the saved one stopped. It refuses a state from a different
  config, tokenizer vocabulary, corpus size or process layout.

Evaluation (`make_eval_batches`) reads `eval_split` in stored order, without
shuffle or repeat, packs the same way and returns the first ``max_batches``
full batches: the same tokens on every call. Every process gets all of them.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from data.packing import PackIterDataset
from data.sources import TextSource, load_source
from data.tokenizers import Tokenizer

_STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What to read and how to batch it.

  Attributes:
    name: 'python_stdlib', 'text_files', or any prepared TFDS dataset name.
    glob: files for 'text_files'.
    data_dir: TFDS data dir; '' = $LEAPFROG_DATA_DIR or ~/tensorflow_datasets.
    text_key: record key of the text for TFDS datasets ('a/b' if nested).
    seq_len: model input length T; rows hold T + 1 tokens.
    batch_size: GLOBAL batch size B (split evenly over processes).
    shuffle_seed: document-order seed.
    eval_split: split `make_eval_batches` reads.
    train_split: split `make_train_iterator` reads.
    read_threads: threads reading + tokenizing documents (grain
      ``ReadOptions.num_threads``); 0 = the calling thread. Output identical.
  """

  name: str = 'python_stdlib'
  glob: str = ''
  data_dir: str = ''
  text_key: str = 'text'
  seq_len: int = 256
  batch_size: int = 16
  shuffle_seed: int = 0
  eval_split: str = 'validation'
  train_split: str = 'train'
  read_threads: int = 0


def _source(cfg: DataConfig, split: str) -> TextSource:
  return load_source(cfg.name, split, cfg.data_dir, glob=cfg.glob,
                     text_key=cfg.text_key)


def load_texts(cfg: DataConfig, split: str,
               max_docs: int | None = None) -> Iterator[str]:
  """Raw documents of ``split`` in stored order (the first ``max_docs``).

  The source is opened (and prepared if needed) before this returns; the
  documents are then read lazily.
  """
  source = _source(cfg, split)
  count = len(source) if max_docs is None else min(max_docs, len(source))
  return (source[i]['text'] for i in range(count))


def tokenize_document(tokenizer: Tokenizer, text: str) -> np.ndarray:
  """One document -> int32 ``[n]``: ``<bos>`` + encode(text) + ``<eos>``."""
  return np.asarray(tokenizer.encode(text, add_bos=True, add_eos=True),
                    np.int32)


def _tokenize_record(tokenizer: Tokenizer, record: dict[str, str]
                     ) -> np.ndarray:
  return tokenize_document(tokenizer, record['text'])


def _shuffle_seed(seed: int) -> int:
  """User seed -> unrelated 32-bit grain seed (see module docstring)."""
  digest = hashlib.md5(f'leapfrog-shuffle-{seed}'.encode()).digest()
  return int.from_bytes(digest[:4], 'big')


def _tokenizer_id(tokenizer: Tokenizer) -> str:
  """Class, vocab size and a hash of a probe encoding (tells tokenizers apart)."""
  probe = tokenizer.encode('def leapfrog(x):\n    return x + 1  # état ✓\n')
  digest = hashlib.md5(json.dumps(probe).encode()).hexdigest()[:8]
  return f'{type(tokenizer).__name__}:{tokenizer.vocab_size}:{digest}'


def _read_options(cfg: DataConfig) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=cfg.read_threads,
                           prefetch_buffer_size=2 * cfg.read_threads)


def _check_sizes(cfg: DataConfig, batch_size: int) -> None:
  if cfg.seq_len < 1 or batch_size < 1:
    raise ValueError(f'seq_len and batch_size must be >= 1; got '
                     f'seq_len={cfg.seq_len}, batch_size={batch_size}.')


class TrainIterator(grain.DatasetIterator):
  """Infinite iterator of ``{'tokens': int32 [B_local, seq_len + 1]}``.

  A grain `DatasetIterator`, so `grain.checkpoint.CheckpointSave/Restore`
  (Orbax) work with it as well as ``get_state`` / ``set_state``.
  """

  def __init__(self, parent: grain.DatasetIterator,
               fingerprint: dict[str, Any]) -> None:
    super().__init__(parent)
    self._fingerprint = fingerprint

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._parent)

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable state: config fingerprint + grain pipeline state."""
    return json.loads(json.dumps({
        'version': _STATE_VERSION, 'fingerprint': self._fingerprint,
        'pipeline': self._parent.get_state()}))

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues from ``state`` (from `get_state` of a same-config iterator)."""
    if state.get('version') != _STATE_VERSION:
      raise ValueError(f'Unsupported data iterator state version '
                       f'{state.get("version")!r}; expected {_STATE_VERSION}.')
    saved = state['fingerprint']
    diff = {k: (saved.get(k), v) for k, v in self._fingerprint.items()
            if saved.get(k) != v}
    if diff:
      raise ValueError('Data iterator state comes from a different pipeline '
                       f'(field: (saved, current)): {diff}')
    self._parent.set_state(copy.deepcopy(state['pipeline']))


def make_train_iterator(cfg: DataConfig, tokenizer: Tokenizer, *,
                        process_index: int = 0,
                        process_count: int = 1) -> TrainIterator:
  """Infinite packed training batches for one process.

  Returns:
    `TrainIterator` of ``{'tokens': np.int32 [batch_size // process_count,
    seq_len + 1]}``.

  Raises:
    ValueError: batch_size not divisible by process_count, bad
      process_index, or an empty training split.
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'Need 0 <= process_index < process_count; got '
                     f'{process_index}, {process_count}.')
  if cfg.batch_size % process_count:
    raise ValueError(f'batch_size {cfg.batch_size} is not divisible by '
                     f'process_count {process_count}.')
  local_batch = cfg.batch_size // process_count
  _check_sizes(cfg, local_batch)
  source = _source(cfg, cfg.train_split)
  if not len(source):
    raise ValueError(f'Split {cfg.train_split!r} of {cfg.name!r} is empty.')
  docs = (grain.MapDataset.source(source)
          .shuffle(seed=_shuffle_seed(cfg.shuffle_seed))
          .repeat(None))
  docs = docs[process_index::process_count]
  docs = docs.map(functools.partial(_tokenize_record, tokenizer))
  rows = PackIterDataset(docs.to_iter_dataset(_read_options(cfg)),
                         cfg.seq_len + 1)
  batches = rows.batch(local_batch, drop_remainder=True)
  fingerprint = {
      'name': cfg.name, 'glob': cfg.glob, 'text_key': cfg.text_key,
      'split': cfg.train_split, 'num_docs': len(source),
      'seq_len': cfg.seq_len, 'batch_size': cfg.batch_size,
      'shuffle_seed': cfg.shuffle_seed, 'process_index': process_index,
      'process_count': process_count, 'tokenizer': _tokenizer_id(tokenizer)}
  return TrainIterator(iter(batches), fingerprint)


def make_eval_batches(cfg: DataConfig, tokenizer: Tokenizer, *,
                      max_batches: int,
                      batch_size: int | None = None) -> list[dict[str, Any]]:
  """The first ``max_batches`` packed batches of ``cfg.eval_split``.

  Returns:
    list (at most ``max_batches`` long) of ``{'tokens': np.int32 [B,
    seq_len + 1]}`` with ``B = batch_size or cfg.batch_size``; the same on
    every call.

  Raises:
    ValueError: if the split has too few tokens for even one batch.
  """
  batch = batch_size or cfg.batch_size
  _check_sizes(cfg, batch)
  source = _source(cfg, cfg.eval_split)
  docs = grain.MapDataset.source(source).map(
      functools.partial(_tokenize_record, tokenizer))
  rows = PackIterDataset(docs.to_iter_dataset(_read_options(cfg)),
                         cfg.seq_len + 1)
  out = []
  if max_batches > 0:
    for b in rows.batch(batch, drop_remainder=True):
      out.append(b)
      if len(out) == max_batches:
        break
  if max_batches > 0 and not out:
    raise ValueError(
        f'Split {cfg.eval_split!r} of {cfg.name!r} has fewer than '
        f'{batch} x {cfg.seq_len + 1} tokens: not even one eval batch.')
  return out
