"""The insertion-LM (ILM) objective: which dropped tokens belong in which gap (a hand-built
row and a reconstruction property), the loss it trains, and its errors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import diffusion_tasks
from models import Transformer, init_params
from models.kind import ModelKind
from testlib import small_config
from training import objectives
from training.objectives import insertion as ins

V, EOS = 64, 40


def _drop(tokens, prompt, droppable, dropped):
  a = lambda x: jnp.asarray(np.asarray(x))
  return jax.tree.map(np.asarray, ins.drop_tokens(a(tokens), a(prompt), a(droppable),
                                                  a(dropped), V, EOS))


def test_hand_built_row_puts_each_dropped_token_in_its_gap():
  #         bos a  b  c  d  e
  tokens = [[1, 10, 11, 12, 13, 14]]
  droppable = [[0, 1, 1, 1, 1, 1]]
  dropped = [[0, 0, 1, 1, 0, 1]]  # drop b, c (after a) and e (after d)
  d = _drop(tokens, [[1, 0, 0, 0, 0, 0]], np.asarray(droppable, bool), np.asarray(dropped, bool))
  assert d.z_BxT1[0, :3].tolist() == [1, 10, 13] and d.length_B.tolist() == [3]
  assert d.positions_BxT1[0].tolist() == [0, 1, 2, -1, -1, -1]
  nz = {(int(g), int(v)): float(d.counts_BxT1xV[0, g, v])
        for g, v in zip(*np.nonzero(d.counts_BxT1xV[0]))}
  assert nz == {(1, 11): 1.0, (1, 12): 1.0, (2, 14): 1.0}
  assert d.n_dropped_B.tolist() == [3]
  assert d.gap_ok_BxT1[0].tolist() == [True, True, True, False, False, False]


def test_task_row_keeps_the_prompt_removes_the_eos_run_and_inserts_after_it():
  #         bos p  sep x   y   eos  eos
  tokens = np.array([[1, 5, 4, 20, 21, EOS, EOS]])
  weights = np.array([[0, 0, 1, 1, 1, 1]], np.float32)  # targets tokens[1:]
  batch = {'tokens': jnp.asarray(tokens), 'weights': jnp.asarray(weights)}
  can = np.asarray(ins.droppable(batch, EOS))
  assert can[0].tolist() == [False, False, False, True, True, False, False]
  prompt = ~np.asarray(ins.lib.maskable(batch))
  d = _drop(tokens, prompt, can, np.array([[0, 0, 0, 1, 0, 0, 0]], bool))
  assert d.z_BxT1[0, :4].tolist() == [1, 5, 4, 21] and d.length_B.tolist() == [4]
  assert float(d.counts_BxT1xV[0, 2, 20]) == 1.0 and float(d.counts_BxT1xV.sum()) == 1.0
  # Gaps: from <sep> (the last prompt token) to the last kept token.
  assert d.gap_ok_BxT1[0].tolist() == [False, False, True, True, False, False, False]
  nothing = _drop(tokens, prompt, can, np.zeros_like(can))
  assert nothing.n_dropped_B.tolist() == [0] and nothing.length_B.tolist() == [5]


def test_inserting_every_target_reconstructs_the_row():
  """Rows whose droppable tokens increase: the order inside a gap is then known from the
  counts alone, so z with each gap's targets put back must be the row (before its <eos>)."""
  rng = np.random.default_rng(0)
  B, T1 = 64, 20
  tokens = np.full((B, T1), EOS, np.int32)
  prompt = np.zeros((B, T1), bool)
  droppable = np.zeros((B, T1), bool)
  originals = []
  for b in range(B):
    p = int(rng.integers(1, 5))  # <bos> + prompt tokens (any order)
    m = int(rng.integers(0, T1 - p + 1))
    head = [1] + rng.integers(0, 30, p - 1).tolist()
    body = sorted(rng.choice(np.arange(41, V), m, replace=False).tolist())
    tokens[b, :p + m] = head + body
    prompt[b, :p] = True
    droppable[b, p:p + m] = True
    originals.append(head + body)
  dropped = droppable & (rng.random((B, T1)) < rng.random((B, 1)))
  d = _drop(tokens, prompt, droppable, dropped)
  for b in range(B):
    n = int(d.length_B[b])
    recon = []
    for g in range(n):
      recon.append(int(d.z_BxT1[b, g]))
      recon += [int(v) for v in np.nonzero(d.counts_BxT1xV[b, g])[0]
                for _ in range(int(d.counts_BxT1xV[b, g, v]))]
    assert recon == originals[b], b
    assert float(d.counts_BxT1xV[b].sum()) == dropped[b].sum() == d.n_dropped_B[b]
    assert not d.counts_BxT1xV[b, n:].any()  # no target past the sequence


def test_sample_drops_covers_none_to_all():
  can = jnp.asarray(np.tile(np.arange(12) > 1, (4000, 1)))
  dropped = np.asarray(ins.sample_drops(jax.random.key(0), can))
  assert not dropped[:, :2].any()
  n = dropped.sum(1)
  counts = np.bincount(n, minlength=11)
  assert counts.min() > 4000 / 11 * 0.8 and counts.max() < 4000 / 11 * 1.2  # n ~ U{0..10}


def _objective():
  config = diffusion_tasks.get_config('sudoku4,ilm,test')
  model = Transformer(small_config(vocab_size=272))
  return config, model, objectives.make_objective('insertion', model, config)


def test_loss_decreases_on_the_test_preset():
  config, model, obj = _objective()
  assert obj.kind == ModelKind(attention='bidirectional', insertion=True)
  import data as data_lib
  tok = data_lib.ByteTokenizer()
  dc = ml_collections.ConfigDict(dict(seq_len=config.data.seq_len, batch_size=8))
  batches = [jax.tree.map(jnp.asarray, b) for b, _ in
             zip(obj.make_train_iterator(dc, tok), range(4))]
  params = {'model': init_params(model, jax.random.key(0))}
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, batch, rng):
    (loss, metrics), grads = jax.value_and_grad(obj.loss_fn, has_aux=True)(params, batch, rng)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, metrics

  def eval_loss(params):
    return np.mean([float(obj.loss_fn(params, b, jax.random.key(100 + i))[0])
                    for i, b in enumerate(batches) for _ in range(2)])

  before = eval_loss(params)
  for i in range(40):
    params, opt_state, metrics = step(params, opt_state, batches[i % 4], jax.random.key(i))
  after = eval_loss(params)
  assert np.isfinite(after) and after < 0.7 * before, (before, after)
  assert 0 <= float(metrics['insert_accuracy']) <= 1


def test_clear_errors_on_bad_input():
  with pytest.raises(ValueError, match='insertion'):
    ins.settings(ml_collections.ConfigDict({'tokenizer': {'kind': 'byte'}}))
  c = diffusion_tasks.get_config('sudoku4,ilm,test').to_dict()
  c['insertion']['bogus'] = 1
  with pytest.raises(ValueError, match='bogus'):
    ins.settings(ml_collections.ConfigDict(c))
  with pytest.raises(ValueError, match='stop_weight'):
    ins.InsertionSettings(eos_id=2, stop_weight=-1.0)
  c = diffusion_tasks.get_config('sudoku4,ilm,test').to_dict()
  c['insertion']['eos_id'] = 999
  with pytest.raises(ValueError, match='outside the vocabulary'):
    objectives.make_objective('insertion', Transformer(small_config(vocab_size=272)),
                              ml_collections.ConfigDict(c))
  with pytest.raises(ValueError, match=r'\[B, T\+1\]'):
    ins.drop_tokens(jnp.zeros((2, 5), jnp.int32), jnp.zeros((2, 5), bool),
                    jnp.zeros((2, 4), bool), jnp.zeros((2, 5), bool), V, EOS)
  assert ins.settings(diffusion_tasks.get_config('sudoku4,ilm,test')).eos_id == 258
