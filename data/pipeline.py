"""grain input pipelines: packed token batches for training and evaluation.

Training (`make_train_iterator`): row r of every global batch (B rows) is its own stream,
so the batches do not depend on how many processes read them::

  load_source(train_split)                      documents {'text': str}
  -> MapDataset.source -> .shuffle(seed) -> .repeat()   new order each epoch
  -> [r::B]                                     stream r: documents r, r+B, r+2B, ...
  -> .map(tokenize)                             int32 [<bos> text <eos>]
  -> .to_iter_dataset(ReadOptions(read_threads))
  -> PackIterDataset(seq_len + 1)               concatenate, cut, no padding
  => one row per stream, rows r0..r1-1 stacked  {'tokens': int32 [r1 - r0, seq_len+1]}

Process p of P reads the streams of rows [p·B/P, (p+1)·B/P): the block of the global batch
that `jax.make_array_from_process_local_data` expects from it. Rows are ``seq_len + 1``
long so that ``inputs = tokens[:, :-1]`` and ``targets = tokens[:, 1:]`` are both
``[B, seq_len]``. There is no padding and there are no segment ids; see `data.packing`
for why.

Deterministic guarantees:

* Same config, tokenizer and corpus -> the same global batches, in every run, on every
  machine, whatever the number of processes (any P that divides B) and `read_threads`.
  Process p's rows are exactly rows [p·B/P, (p+1)·B/P) of the single-process batches.
* The streams' documents are disjoint and together are every document of the epoch order;
  processes therefore read disjoint documents.
* Epoch ``e`` visits every document once, in an order fixed by (shuffle_seed, e). The user
  seed is hashed first, because grain seeds epoch ``e`` with ``seed + e`` and seeds 0 and
  1 would otherwise share epochs. (Streams advance at their own pace: near an epoch's end
  one stream may start the next epoch while another finishes this one.)
* `TrainIterator.get_state()` is a small JSON-serialisable dict holding the position of
  each of this process's streams; `merge_states` joins the states of all processes into
  the state of the whole batch, and ``set_state`` on a fresh iterator (any process layout)
  built from the same config takes its streams from it and continues exactly. It refuses
  a state from a different config, tokenizer vocabulary or corpus size, or one that lacks
  its streams.

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

# 1: one stream per process (process layout in the fingerprint); 2: one stream per row.
_STATE_VERSION = 2


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


def token_counts(cfg: DataConfig, tokenizer: Tokenizer, split: str | None = None,
                 max_docs: int | None = None) -> np.ndarray:
  """int64 ``[tokenizer.vocab_size]``: how often each id occurs in ``split`` (default the
  training split; the first ``max_docs`` documents), tokenized as training reads it."""
  counts = np.zeros(tokenizer.vocab_size, np.int64)
  for text in load_texts(cfg, split or cfg.train_split, max_docs=max_docs):
    ids = tokenize_document(tokenizer, text).astype(np.int64)
    counts += np.bincount(ids, minlength=tokenizer.vocab_size)[:tokenizer.vocab_size]
  return counts


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


class TrainIterator:
  """Infinite iterator of ``{'tokens': int32 [rows, seq_len + 1]}``: one row from each of
  this process's streams (rows ``row_start .. row_stop - 1`` of the global batch).

  ``get_state`` / ``set_state`` checkpoint it; `merge_states` joins the states of the
  processes of one job.
  """

  def __init__(self, streams: dict[int, grain.DatasetIterator],
               fingerprint: dict[str, Any]) -> None:
    self._streams = streams
    self._fingerprint = fingerprint
    self.row_start, self.row_stop = min(streams), max(streams) + 1

  def __iter__(self) -> TrainIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return {'tokens': np.stack([next(it)['tokens'] for it in self._streams.values()])}

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable state: config fingerprint + each stream's position."""
    return json.loads(json.dumps({
        'version': _STATE_VERSION, 'fingerprint': self._fingerprint,
        'streams': {str(r): it.get_state() for r, it in self._streams.items()}}))

  @staticmethod
  def merge_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The states of every process of a job -> one state holding every stream."""
    first = states[0]
    for other in states[1:]:
      if (other.get('version'), other.get('fingerprint')) != (first.get('version'),
                                                               first.get('fingerprint')):
        raise ValueError('Data iterator states of different pipelines cannot be merged: '
                         f'{first.get("fingerprint")} vs {other.get("fingerprint")}.')
    streams = {}
    for state in states:
      streams.update(state['streams'])
    return dict(first, streams=streams)

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues from ``state`` (from `get_state`, or `merge_states` of several processes'
    states, of a same-config iterator; the process layout may differ)."""
    if state.get('version') != _STATE_VERSION:
      raise ValueError(f'Unsupported data iterator state version {state.get("version")!r} '
                       f'(this pipeline writes version {_STATE_VERSION}: one stream per '
                       'batch row). A checkpoint from an older pipeline cannot continue '
                       'training here; start a new workdir or use the commit that wrote it.')
    saved = state['fingerprint']
    diff = {k: (saved.get(k), v) for k, v in self._fingerprint.items()
            if saved.get(k) != v}
    if diff:
      raise ValueError('Data iterator state comes from a different pipeline '
                       f'(field: (saved, current)): {diff}')
    missing = [r for r in self._streams if str(r) not in state['streams']]
    if missing:
      raise ValueError(f'Data iterator state lacks the streams of rows {missing} (it holds '
                       f'{sorted(map(int, state["streams"]))}): merge the states of every '
                       'process (TrainIterator.merge_states) before saving.')
    for r, it in self._streams.items():
      it.set_state(copy.deepcopy(state['streams'][str(r)]))


def process_rows(batch_size: int, process_index: int, process_count: int) -> tuple[int, int]:
  """Rows [start, stop) of a global batch that process `process_index` of `process_count`
  reads: its contiguous block."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'Need 0 <= process_index < process_count; got '
                     f'{process_index}, {process_count}.')
  if batch_size % process_count:
    raise ValueError(f'batch_size {batch_size} is not divisible by '
                     f'process_count {process_count}.')
  local = batch_size // process_count
  return process_index * local, (process_index + 1) * local


def make_train_iterator(cfg: DataConfig, tokenizer: Tokenizer, *,
                        process_index: int = 0,
                        process_count: int = 1) -> TrainIterator:
  """Infinite packed training batches for one process.

  Returns:
    `TrainIterator` of ``{'tokens': np.int32 [batch_size // process_count,
    seq_len + 1]}``: rows `process_rows(...)` of the global batch.

  Raises:
    ValueError: batch_size not divisible by process_count, bad
      process_index, or an empty training split.
  """
  start, stop = process_rows(cfg.batch_size, process_index, process_count)
  _check_sizes(cfg, stop - start)
  source = _source(cfg, cfg.train_split)
  if not len(source):
    raise ValueError(f'Split {cfg.train_split!r} of {cfg.name!r} is empty.')
  docs = (grain.MapDataset.source(source)
          .shuffle(seed=_shuffle_seed(cfg.shuffle_seed))
          .repeat(None))
  tokenize = functools.partial(_tokenize_record, tokenizer)
  streams = {}
  for r in range(start, stop):
    rows = PackIterDataset(docs[r::cfg.batch_size].map(tokenize)
                           .to_iter_dataset(_read_options(cfg)), cfg.seq_len + 1)
    streams[r] = iter(rows)
  fingerprint = {
      'name': cfg.name, 'glob': cfg.glob, 'text_key': cfg.text_key,
      'split': cfg.train_split, 'num_docs': len(source),
      'seq_len': cfg.seq_len, 'batch_size': cfg.batch_size,
      'shuffle_seed': cfg.shuffle_seed, 'tokenizer': _tokenizer_id(tokenizer)}
  return TrainIterator(streams, fingerprint)


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
