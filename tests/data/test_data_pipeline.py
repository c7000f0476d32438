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


def _documents(batches: list[np.ndarray]) -> list[str]:
  """Complete documents (<bos> ... <eos>) in a stream of batches, in order."""
  stream = np.concatenate([b.reshape(-1) for b in batches]).tolist()
  docs, start = [], None
  for i, t in enumerate(stream):
    if t == BOS:
      start = i + 1
    elif t == EOS and start is not None:
      docs.append(TOK.decode(stream[start:i]))
      start = None
  return docs


def _split_texts(data_cfg, split: str) -> set[str]:
  return set(pipeline.load_texts(data_cfg, split))


def test_batches_shape_dtype_and_content(data_cfg, corpus):
  batch = next(pipeline.make_train_iterator(data_cfg, TOK))
  assert set(batch) == {'tokens'}
  assert batch['tokens'].shape == (4, 33)
  assert batch['tokens'].dtype == np.int32
  assert ((0 <= batch['tokens']) & (batch['tokens'] < TOK.vocab_size)).all()
  # Every token is real (no padding): the first epoch's stream is exactly the
  # train documents, each once, each framed by <bos> ... <eos>.
  train = _split_texts(data_cfg, 'train')
  total = sum(len(t.encode()) + 2 for t in train)
  n = total // (4 * 33)
  docs = _documents(_take(pipeline.make_train_iterator(data_cfg, TOK), n))
  assert len(docs) >= len(train) - 2  # At most the last ones are cut off.
  assert len(set(docs)) == len(docs) and set(docs) <= train
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
  total = sum(len(t.encode()) + 2 for t in train)
  docs = _documents(_take(pipeline.make_train_iterator(data_cfg, TOK),
                          3 * total // (4 * 33)))
  n = len(train)
  first, second = docs[:n], docs[n:2 * n]
  assert set(first) == set(second) == train
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


def test_process_shards_are_disjoint_and_cover(data_cfg):
  train = _split_texts(data_cfg, 'train')
  total = sum(len(t.encode()) + 2 for t in train)
  shard_docs = []
  for p in range(2):
    it = pipeline.make_train_iterator(data_cfg, TOK, process_index=p,
                                      process_count=2)
    first = next(it)['tokens']
    assert first.shape == (2, 33)
    shard_docs.append((first, _documents([first] + _take(
        it, total // (2 * 33 * 2) - 1))))
  (first0, docs0), (first1, docs1) = shard_docs
  assert not np.array_equal(first0, first1)
  assert docs0 and docs1 and not set(docs0) & set(docs1)
  single = _documents(_take(pipeline.make_train_iterator(data_cfg, TOK),
                            total // (4 * 33)))
  # Shard p holds the single-process order's documents p, p+2, ...
  assert docs0[:6] == single[0::2][:6]
  assert docs1[:6] == single[1::2][:6]
  assert set(docs0) | set(docs1) <= train


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
