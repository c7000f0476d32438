"""CtrlDiff training: the multi-size block diffusion loss (partitions, masks), the block-size
predictor's labels and its loss decreasing from a perturbed start, and clear errors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import ctrldiff as ctrldiff_config
from configs import diffusion_tasks
from models import Transformer, init_params
from models import block_size as bs_lib
from testlib import small_config
from training.objectives import block_diffusion as bd
from training.objectives import ctrldiff as ctrl
from training.objectives import diffusion_lib as lib

V, MASK = 32, 31


def test_random_partitions_use_the_allowed_sizes():
  blk = np.asarray(bd.random_block_ids(jax.random.key(0), 64, 40, (2, 4, 8)))
  assert np.all(np.diff(blk, axis=1) >= 0) and np.all(np.diff(blk, axis=1) <= 1)
  aligned = mixed = 0
  for row in blk:
    lengths = np.bincount(row)
    inner = lengths[1:-1]  # the first may be cut, the last truncated by the row end
    assert set(inner) <= {2, 4, 8}, lengths
    if len(set(lengths[:-1])) == 1:  # one size from position 0: blk = position // n
      np.testing.assert_array_equal(row, np.arange(40) // lengths[0])
      aligned += 1
    mixed += len(set(inner)) > 1
  assert aligned > 0 and mixed > 0  # both kinds of rows occur


def test_mask_from_blocks_equals_the_fixed_mask():
  for n in (2, 4):
    np.testing.assert_array_equal(
        bd.two_stream_mask_from_blocks((jnp.arange(12) // n)[None])[0],
        bd.two_stream_mask(12, n))


def test_multi_size_loss_ignores_the_future_blocks():
  """Queries of a block never depend on later blocks' tokens under the per-row masks."""
  model = Transformer(small_config(vocab_size=V, num_layers=1))
  params = init_params(model, jax.random.key(0))
  blk = jnp.array([[0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3]])
  tokens = jnp.arange(12)[None] % 7
  pos = jnp.concatenate([jnp.arange(12), jnp.arange(12)])[None]
  logits = model.apply({'params': params}, jnp.concatenate([tokens, tokens], 1), pos,
                       attn_mask=bd.two_stream_mask_from_blocks(blk)).logits_BxTxV
  tokens2 = tokens.at[0, 8].set(20)  # change a token of block 2
  out2 = model.apply({'params': params}, jnp.concatenate([tokens2, tokens2], 1), pos,
                     attn_mask=bd.two_stream_mask_from_blocks(blk)).logits_BxTxV
  diff = np.abs(np.asarray(out2 - logits)).max(-1)[0]
  # Noised and clean queries of blocks 0 and 1 (positions 0..5) never see position 8.
  assert np.all(diff[:6] == 0) and np.all(diff[12:18] == 0)
  assert diff[6:10].max() > 0


def _task_batch():
  tokens = jax.random.randint(jax.random.key(2), (8, 20), 0, 20)
  maskable = jnp.broadcast_to(jnp.arange(20) >= 6, (8, 20))
  return tokens, maskable


def test_predictor_loss_decreases_and_labels_are_model_decodes():
  model = Transformer(small_config(vocab_size=V, num_layers=1))
  params = init_params(model, jax.random.key(0))
  tokens, maskable = _task_batch()
  sizes = (2, 4)
  label, valid, s, feat = ctrl.size_labels(model, params, tokens, maskable, 4,
                                           jnp.array([0, 1, 2, 3] * 2), MASK, False)
  assert label.shape == valid.shape == s.shape == (8, 5) and feat.shape[:2] == (8, 5)
  assert np.all(np.asarray(s)[np.asarray(valid)] >= 6)
  # A label is exactly: the one-step decode of that block (masked from s) is all right.
  b, row, j = 4, 2, 2
  s0 = int(s[row, j])
  z = tokens[row].at[s0:(j + 1) * b].set(MASK)
  blk = jnp.arange(20) // b
  out = model.apply({'params': params}, jnp.concatenate([z, tokens[row]])[None],
                    jnp.concatenate([jnp.arange(20)] * 2)[None],
                    attn_mask=bd.two_stream_mask_from_blocks(blk[None]))
  pred = jnp.argmax(lib.subs_log_probs(out.logits_BxTxV[0, s0:(j + 1) * b], MASK), -1)
  assert float(label[row, j]) == float(np.all(np.asarray(pred) == np.asarray(
      tokens[row, s0:(j + 1) * b])))
  head = bs_lib.init_params(jax.random.key(1), model.cfg.d_model, len(sizes))
  head = jax.tree.map(lambda x: x + 0.5 * jax.random.normal(jax.random.key(3), x.shape), head)
  loss_fn = lambda h: ctrl.predictor_loss(model, params, h, tokens, maskable,
                                          jax.random.key(4), sizes, MASK, False)[0]
  opt = optax.adam(3e-2)

  @jax.jit
  def step(h, state):
    loss, g = jax.value_and_grad(loss_fn)(h)
    upd, state = opt.update(g, state)
    return optax.apply_updates(h, upd), state, loss

  state = opt.init(head)
  losses = []
  for _ in range(16):
    head, state, loss = step(head, state)
    losses.append(float(loss))
  assert losses[-1] < 0.7 * losses[0], losses


def test_configs_and_bad_settings():
  c = diffusion_tasks.get_config('sudoku4,ctrldiff,test')
  assert lib.settings(c).block_size_set == (2, 4, 8, 16)
  assert ctrldiff_config.get_config('sudoku4,test').data.batch_size % 8 == 0
  with pytest.raises(ValueError, match='block_sizes'):
    lib.DiffusionSettings(mask_id=3, block_sizes='2,x')
  with pytest.raises(ValueError, match='positive'):
    lib.DiffusionSettings(mask_id=3, block_sizes='0,2')
  bad = ml_collections.ConfigDict(dict(ctrldiff=dict(sizes='3,4', diffusion_workdir='')))
  with pytest.raises(ValueError, match='divide'):
    ctrl.ctrldiff_settings(bad)
  with pytest.raises(ValueError, match='ctrldiff` config section'):
    ctrl.ctrldiff_settings(ml_collections.ConfigDict())
