"""Tests for data.pipeline / data.packing (grain), on a small text_files corpus."""

from __future__ import annotations

import dataclasses
import json

import grain
import numpy as np
import pytest

from data import pipeline
from data.packing import PackIterDataset
from data.tokenizers import ByteTokenizer

TOK = ByteTokenizer()
BOS, EOS = 257, 258  # Byte tokenizer specials, from its documented layout.


@pytest.fixture(scope='module')
def data_cfg(corpus, data_dir) -> pipeline.DataConfig:
  return pipeline.DataConfig(name='text_files', glob=corpus.glob,
                             data_dir=data_dir, seq_len=32, batch_size=4,
                             shuffle_seed=7)


def _take(it, n: int) -> list[np.ndarray]:
  return [next(it)['tokens'] for _ in range(n)]


def _framed(stream: list[int]) -> list[str]:
  """Complete documents (<bos> ... <eos>) in a token stream, in order."""
  docs, start = [], None
  for i, t in enumerate(stream):
    if t == BOS:
      start = i + 1
    elif t == EOS and start is not None:
      docs.append(TOK.decode(stream[start:i]))
      start = None
  return docs


def _streams(batches: list[np.ndarray]) -> list[list[str]]:
  """Row r of every batch is one packed stream: its complete documents, per row."""
  rows = np.stack(batches)  # [n, B, T+1]
  return [_framed(rows[:, r].reshape(-1).tolist()) for r in range(rows.shape[1])]


def _doc_order(batches: list[np.ndarray]) -> list[str]:
  """The documents in epoch order: stream r holds positions r, r+B, ..., so position i is
  document i // B of stream i % B (up to the first position not complete yet)."""
  streams = _streams(batches)
  order, i = [], 0
  while i // len(streams) < len(streams[i % len(streams)]):
    order.append(streams[i % len(streams)][i // len(streams)])
    i += 1
  return order


def _batches_covering(data_cfg, epochs: int) -> int:
  """Enough batches for every stream to pass `epochs` epochs (each stream gets at least
  the whole corpus's tokens per epoch)."""
  train = _split_texts(data_cfg, 'train')
  total = sum(len(t.encode()) + 2 for t in train)
  return epochs * total // (data_cfg.seq_len + 1) + 2


def _split_texts(data_cfg, split: str) -> set[str]:
  return set(pipeline.load_texts(data_cfg, split))


def test_batches_shape_dtype_and_content(data_cfg, corpus):
  batch = next(pipeline.make_train_iterator(data_cfg, TOK))
  assert set(batch) == {'tokens'}
  assert batch['tokens'].shape == (4, 33)
  assert batch['tokens'].dtype == np.int32
  assert ((0 <= batch['tokens']) & (batch['tokens'] < TOK.vocab_size)).all()
  # Every token is real (no padding): each row's stream is documents framed by
  # <bos> ... <eos> back to back, and the first epoch is exactly the train documents.
  train = _split_texts(data_cfg, 'train')
  batches = _take(pipeline.make_train_iterator(data_cfg, TOK), _batches_covering(data_cfg, 1))
  for r in range(4):
    stream = np.stack(batches)[:, r].reshape(-1)
    assert stream[0] == BOS
  order = _doc_order(batches)
  assert len(order) >= len(train)
  assert sorted(order[:len(train)]) == sorted(train)
  assert train <= set(corpus.docs.values())


def test_same_seed_same_batches_other_seed_differs(data_cfg):
  a = _take(pipeline.make_train_iterator(data_cfg, TOK), 6)
  b = _take(pipeline.make_train_iterator(data_cfg, TOK), 6)
  threaded = dataclasses.replace(data_cfg, read_threads=2)
  c = _take(pipeline.make_train_iterator(threaded, TOK), 6)
  other = dataclasses.replace(data_cfg, shuffle_seed=8)
  d = _take(pipeline.make_train_iterator(other, TOK), 6)
  np.testing.assert_array_equal(np.stack(a), np.stack(b))
  np.testing.assert_array_equal(np.stack(a), np.stack(c))
  assert not np.array_equal(np.stack(a), np.stack(d))


def test_epochs_are_reshuffled(data_cfg):
  train = _split_texts(data_cfg, 'train')
  order = _doc_order(_take(pipeline.make_train_iterator(data_cfg, TOK),
                           _batches_covering(data_cfg, 2)))
  n = len(train)
  first, second = order[:n], order[n:2 * n]
  assert sorted(first) == sorted(second) == sorted(train)
  assert first != second  # Same documents, another order.


def test_checkpoint_resume_continues_exactly(data_cfg):
  it = pipeline.make_train_iterator(data_cfg, TOK)
  _take(it, 7)
  state = json.loads(json.dumps(it.get_state()))  # As a checkpoint stores it.
  expected = _take(it, 5)
  fresh = pipeline.make_train_iterator(data_cfg, TOK)
  fresh.set_state(state)
  np.testing.assert_array_equal(np.stack(_take(fresh, 5)), np.stack(expected))


def test_resume_from_many_states(data_cfg):
  it = pipeline.make_train_iterator(data_cfg, TOK)
  states, batches = [], []
  for _ in range(40):
    states.append(json.loads(json.dumps(it.get_state())))
    batches.append(next(it)['tokens'])
  for k in (0, 1, 13, 26, 37):
    fresh = pipeline.make_train_iterator(data_cfg, TOK)
    fresh.set_state(states[k])
    np.testing.assert_array_equal(np.stack(_take(fresh, 3)),
                                  np.stack(batches[k:k + 3]))


def test_state_from_other_config_is_refused(data_cfg):
  state = pipeline.make_train_iterator(data_cfg, TOK).get_state()
  other = pipeline.make_train_iterator(dataclasses.replace(data_cfg, seq_len=16),
                                       TOK)
  with pytest.raises(ValueError, match='seq_len'):
    other.set_state(state)


def test_pack_resumes_at_document_boundaries():
  # Documents exactly one row long: every row ends a document.
  docs = [np.full([5], i, np.int32) for i in range(12)]
  rows = PackIterDataset(grain.MapDataset.source(docs).to_iter_dataset(
      grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)), 5)
  it = iter(rows)
  first = [next(it)['tokens'] for _ in range(3)]
  state = json.loads(json.dumps(it.get_state()))
  rest = [next(it)['tokens'] for _ in range(3)]
  assert [r[0] for r in first + rest] == list(range(6))
  again = iter(rows)
  again.set_state(state)
  assert [next(again)['tokens'][0] for _ in range(3)] == [3, 4, 5]


def test_pack_splits_and_joins_documents():
  docs = [np.arange(n, dtype=np.int32) + 10 * n for n in (3, 7, 2, 4)]
  rows = PackIterDataset(grain.MapDataset.source(docs).to_iter_dataset(
      grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)), 4)
  got = [r['tokens'].tolist() for r in rows]
  flat = np.concatenate(docs).tolist()  # 16 tokens -> 4 full rows.
  assert got == [flat[0:4], flat[4:8], flat[8:12], flat[12:16]]


@pytest.mark.parametrize('processes', [2, 4])
def test_processes_read_disjoint_blocks_of_the_same_batches(data_cfg, processes):
  """Process p of P gets exactly rows [p·B/P, (p+1)·B/P) of the single-process batches, and
  the processes' first-epoch documents are disjoint and together every train document."""
  n = _batches_covering(data_cfg, 1)
  single = np.stack(_take(pipeline.make_train_iterator(data_cfg, TOK), n))
  train = _split_texts(data_cfg, 'train')
  local = 4 // processes
  seen = []
  for p in range(processes):
    it = pipeline.make_train_iterator(data_cfg, TOK, process_index=p,
                                      process_count=processes)
    mine = np.stack(_take(it, n))
    assert mine.shape == (n, local, 33)
    np.testing.assert_array_equal(mine, single[:, p * local:(p + 1) * local])
    # Stream r's first-epoch documents are epoch positions r, r+4, ... < len(train).
    for j, docs in enumerate(_streams(list(mine))):
      r = p * local + j
      seen.append(set(docs[:len(range(r, len(train), 4))]))
  assert sum(map(len, seen)) == len(train)  # disjoint ...
  assert set().union(*seen) == train        # ... and covering


@pytest.mark.parametrize('before,after', [(2, 1), (1, 2), (2, 4), (4, 2)])
def test_state_moves_between_process_layouts(data_cfg, before, after):
  """States of `before` processes, merged, continue exactly on `after` processes."""
  single = _take(pipeline.make_train_iterator(data_cfg, TOK), 12)
  its = [pipeline.make_train_iterator(data_cfg, TOK, process_index=p, process_count=before)
         for p in range(before)]
  for it in its:
    _take(it, 7)
  merged = json.loads(json.dumps(pipeline.TrainIterator.merge_states(
      [it.get_state() for it in its])))
  rest = []
  for p in range(after):
    it = pipeline.make_train_iterator(data_cfg, TOK, process_index=p, process_count=after)
    it.set_state(merged)
    rest.append(np.stack(_take(it, 5)))
  np.testing.assert_array_equal(np.concatenate(rest, axis=1), np.stack(single[7:]))


def test_state_of_one_process_is_not_enough_for_another(data_cfg):
  it = pipeline.make_train_iterator(data_cfg, TOK, process_index=0, process_count=2)
  other = pipeline.make_train_iterator(data_cfg, TOK, process_index=1, process_count=2)
  with pytest.raises(ValueError, match='lacks the streams of rows'):
    other.set_state(it.get_state())


def test_bad_process_layout(data_cfg):
  with pytest.raises(ValueError, match='divisible'):
    pipeline.make_train_iterator(data_cfg, TOK, process_index=0, process_count=3)
  with pytest.raises(ValueError, match='process_index'):
    pipeline.make_train_iterator(data_cfg, TOK, process_index=2, process_count=2)


def test_eval_batches_are_fixed_and_from_validation(data_cfg):
  a = pipeline.make_eval_batches(data_cfg, TOK, max_batches=3, batch_size=1)
  b = pipeline.make_eval_batches(data_cfg, TOK, max_batches=3, batch_size=1)
  assert 1 <= len(a) <= 3 and len(a) == len(b)
  for x, y in zip(a, b):
    assert x['tokens'].shape == (1, 33) and x['tokens'].dtype == np.int32
    np.testing.assert_array_equal(x['tokens'], y['tokens'])
  validation = _split_texts(data_cfg, 'validation')
  text = TOK.decode(np.concatenate([x['tokens'].reshape(-1) for x in a]))
  assert any(text[:20] in doc for doc in validation)
  with pytest.raises(ValueError, match='eval batch'):
    pipeline.make_eval_batches(data_cfg, TOK, max_batches=2, batch_size=10_000)


def test_load_texts(data_cfg, corpus):
  texts = list(pipeline.load_texts(data_cfg, 'train', max_docs=3))
  assert len(texts) == 3 and set(texts) <= set(corpus.docs.values())
  everything = _split_texts(data_cfg, 'train') | _split_texts(data_cfg, 'validation')
  assert everything == set(corpus.docs.values())
