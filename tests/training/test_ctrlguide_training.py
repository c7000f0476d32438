"""The attribute classifier's training: labelled rows, the noise (prompts never masked; both
the uniform and the block-shaped canvases occur), the loss falling on a fixed batch, and
clear errors for bad settings."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import data as data_lib
from configs import ctrlguide as ctrlguide_config
from data.tasks import attributes
from models import attribute as attr_lib
from training.objectives import attribute as attr_obj

MASK = 259


@pytest.fixture(scope='module')
def batch():
  tok = data_lib.ByteTokenizer()
  make = attr_obj.labelled_batch_fn(attributes.get('step_parity'), tok, 32)
  return jax.tree.map(jnp.asarray, make(np.random.default_rng(0), 32)), tok


def test_labels_follow_the_answers(batch):
  b, tok = batch
  attr = attributes.get('step_parity')
  for row, label in zip(np.asarray(b['tokens']), np.asarray(b['label'])):
    text = tok.decode([int(t) for t in row[2:] if t != tok.eos_id])
    xs = [int(v) for v in text.split()]
    assert label == int((xs[1] - xs[0]) % 2 == 0) == attr.label('', text)
  assert attr.label('', 'x y') == -1 and attr.class_index('even') == 1
  with pytest.raises(ValueError, match='not'):
    attr.class_index('blue')
  with pytest.raises(ValueError, match='class 2'):
    attr.class_index(2)


def test_noise_keeps_prompts_and_makes_both_canvases(batch):
  b, _ = batch
  tokens = jnp.tile(b['tokens'], (4, 1))
  maskable = jnp.tile(attr_obj.lib.maskable(b), (4, 1))
  z = np.asarray(attr_obj.noised(jax.random.key(0), tokens, maskable, MASK))
  m = z == MASK
  assert not np.any(m & ~np.asarray(maskable))
  np.testing.assert_array_equal(np.where(m, np.asarray(tokens), z), np.asarray(tokens))
  # Block-shaped rows: masked through the row end from some point on, clean before a cut.
  tail_masked = [r for r in m if r[-1] and np.all(r[np.argmax(r):][-8:])]
  assert len(tail_masked) > 10
  frac = m.sum(1) / np.asarray(maskable).sum(1)
  assert frac.min() < 0.2 and frac.max() > 0.8


def test_loss_falls_on_a_fixed_batch(batch):
  b, tok = batch
  head = attr_lib.init_params(jax.random.key(1), tok.vocab_size, 2, width=16, layers=1,
                              max_len=64)
  opt = optax.adam(1e-2)

  @jax.jit
  def step(h, state):
    (loss, metrics), g = jax.value_and_grad(attr_obj.classifier_loss, has_aux=True)(
        h, b, jax.random.key(2), MASK)  # the same noise every step: a fixed task
    upd, state = opt.update(g, state)
    return optax.apply_updates(h, upd), state, loss, metrics['accuracy']

  state = opt.init(head)
  losses = []
  for _ in range(40):
    head, state, loss, acc = step(head, state)
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0], losses


def test_config_and_bad_settings():
  c = ctrlguide_config.get_config('progression,test')
  assert c.objective == 'attribute_classifier' and c.data.batch_size % 8 == 0
  assert attr_obj.attribute_settings(c).name == 'step_parity'
  with pytest.raises(ValueError, match='No attribute'):
    ctrlguide_config.get_config('sudoku4')
  with pytest.raises(ValueError, match='`attribute` config section'):
    attr_obj.attribute_settings(ml_collections.ConfigDict())
  bad = ml_collections.ConfigDict(dict(attribute=dict(name='step_parity'),
                                       task=dict(name='sudoku4')))
  with pytest.raises(ValueError, match='labels task'):
    attr_obj.attribute_settings(bad)
  with pytest.raises(ValueError, match='Unknown attribute'):
    attributes.get('colour')
