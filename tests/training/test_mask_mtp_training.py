"""Masked-input MTP training (configs/mask_mtp.py): the training forward's mask blocks see
what decoding feeds them, the loss falls on the test preset with the base frozen, a train.py
run drives the mask_mtp decoder (greedy == AR), and clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import testlib
import workbench
from configs import mask_mtp as mask_config
from models import Transformer, init_params, mask_mtp
from testlib import small_config
from training import trainer
from training.objectives import make_objective
from training.objectives import mask_mtp as objective_lib
from workdir import loading


def test_training_blocks_equal_masks_after_the_prefix():
  """Mask j of anchor a in the one-forward training layout has the logits of a plain causal
  forward over [x_0 .. x_a, m_1 .. m_k] (what the decoder runs)."""
  cfg = small_config(vocab_size=40, num_layers=2)
  model = Transformer(cfg)
  tp = init_params(model, jax.random.key(0))
  tree = jax.tree.map(lambda x: x + 0.2 * jax.random.normal(jax.random.key(1), x.shape),
                      mask_mtp.init_params(cfg, 3, 2, jax.random.key(2)))
  T, K = 12, 3
  row = jax.random.randint(jax.random.key(3), (1, T), 0, 40)
  anchors = jnp.array([[4, 10]], jnp.int32)
  lay = objective_lib.layout(T, anchors, K)
  inputs = jnp.concatenate([row, jnp.zeros((1, 2 * K), jnp.int32)], 1)
  apply = jax.jit(lambda *a, **kw: model.apply({'params': tp}, *a, **kw).logits_BxTxV)
  out = apply(inputs, lay['positions_BxL'], attn_mask=lay['mask_BxLxL'],
              lora=mask_mtp.gated_lora(tree, lay['gate_BxL'], lay['index_BxL']))
  assert out.shape[1] == T + 2 * K
  # The decoder's input: row[:a + 1], then k masks; padded to one length (positions -1).
  N = T + K
  for i, a in enumerate([4, 10]):
    seq = jnp.zeros((1, N), jnp.int32).at[:, :a + 1].set(row[:, :a + 1])
    pos = jnp.where(jnp.arange(N) < a + 1 + K, jnp.arange(N), -1)[None]
    gate = jnp.arange(N)[None] > a
    index = jnp.maximum(jnp.arange(N) - a - 1, 0)[None]
    ref = apply(seq, pos, lora=mask_mtp.gated_lora(tree, gate, index))
    np.testing.assert_allclose(out[0, T + i * K:T + (i + 1) * K], ref[0, a + 1:a + 1 + K],
                               atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(lay['target_BxAxK'][0], [[6, 7, 8], [12, 13, 14]])
  np.testing.assert_array_equal(lay['valid_BxAxK'][0, 1], [True, False, False])


def test_loss_decreases_on_the_test_preset(trained_workdir):
  cfg = mask_config.get_config('test')
  cfg.spec.target_workdir = trained_workdir
  target = loading.load_model(trained_workdir)
  objective = make_objective('mask_mtp', Transformer(target.model.cfg), cfg)
  extras = objective.extras(jax.random.key(0))
  assert objective.frozen == ('model',)
  extras, losses, metrics = testlib.train_extras(
      objective, target.params, extras, testlib.code_batch(target.tokenizer, 5), steps=12,
      learning_rate=1e-2)
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.8 * losses[0], losses
  assert {'mtp_loss', 'sampler_loss', 'latent_loss', 'agree1', 'agree3'} <= set(metrics)
  # Every part of the tree learns (the LoRA's B starts at zero).
  b = extras['mask_mtp']['lora']['layer_0']['attn']['q']['b']
  assert float(jnp.abs(b).max()) > 0


def test_train_run_attaches_to_the_target(tmp_path, data_dir, trained_workdir):
  """A train.py run saves the tree beside the frozen target; the workbench refuses the
  decoder without it and passes it once attached (decoding with such a tree: greedy == AR in
  tests/decoding/test_mask_mtp.py)."""
  cfg = mask_config.get_config('test')
  cfg.data.data_dir = data_dir
  cfg.spec.target_workdir = trained_workdir
  cfg.train.update(steps=1, eval_every=1, checkpoint_every=1, eval_batches=1,
                   async_checkpointing=False)
  workdir = str(tmp_path / 'mask_mtp')
  metrics = trainer.train_and_evaluate(cfg, workdir)
  assert np.isfinite(metrics['train']['loss'])
  run = loading.load_model(workdir)
  assert set(run.extras) == {'mask_mtp'} and run.kind.heads == ('mask_mtp',)
  target = loading.load_model(trained_workdir)
  jax.tree.map(np.testing.assert_array_equal, run.params, target.params)  # base frozen
  bench = workbench.Workbench.load(trained_workdir)
  with pytest.raises(ValueError, match='mask_mtp heads in the target run'):
    bench.decoder('mask_mtp')
  bench.add_heads('mask_mtp', workdir)
  assert bench.decoder('mask_mtp', settings={'gamma': 3}).name == 'mask_mtp'
  assert mask_mtp.num_masks(bench.extras['mask_mtp']) == cfg.spec.heads


def test_recipe_errors():
  model = Transformer(small_config())
  with pytest.raises(ValueError, match='spec'):
    make_objective('mask_mtp', model, None)
  bad = mask_config.get_config('test').unlock()
  bad.spec.loss = 'mse'
  with pytest.raises(ValueError, match="spec.loss must be 'ce' or 'kl'"):
    make_objective('mask_mtp', model, bad)
  bad = mask_config.get_config('test').unlock()
  bad.spec.anchors = 40
  with pytest.raises(ValueError, match='spec.anchors=40'):
    make_objective('mask_mtp', model, bad)
  bad = mask_config.get_config('test').unlock()
  bad.spec.target_workdir = ''
  with pytest.raises(ValueError, match='target_workdir'):
    make_objective('mask_mtp', model, bad)
