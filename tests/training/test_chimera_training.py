"""Chimera's draft on a frozen target: the heads start as [W_lm; W_lm], the distillation loss
decreases, a run trained with configs/spec_heads.py:chimera holds the target unchanged plus
the draft, and drives the `chimera` decoder (greedy == AR)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import workbench
from configs import spec_heads
from decoding import registry
from models import heads
from training import trainer
from training.objectives import make_objective
from workdir import loading


def _objective(trained_workdir, loss='kl'):
  cfg = spec_heads.get_config('chimera,test')
  cfg.spec.target_workdir = trained_workdir
  cfg.spec.loss = loss
  target = loading.load_model(trained_workdir)
  return target, make_objective('chimera_draft', target.model, cfg)


def test_chimera_heads_start_from_the_lm_head_and_the_loss_decreases(trained_workdir):
  target, objective = _objective(trained_workdir)
  extras = objective.extras(jax.random.key(0))
  W = heads.output_embedding(target.params, target.model.cfg).T  # [D, V]
  np.testing.assert_array_equal(extras['chimera']['heads'][2], jnp.concatenate([W, W], 0))
  params = {'model': target.params, **extras}
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, 200, (8, 33)), jnp.int32)
  tokens = tokens.at[:, 16:].set(tokens[:, :17])  # a repeat the draft can learn to copy
  tx = optax.adam(3e-3)
  opt = tx.init(params['chimera'])

  @jax.jit
  def train_step(p, opt):
    grad_fn = jax.value_and_grad(lambda c: objective.loss_fn({**params, 'chimera': c},
                                                             {'tokens': tokens}, None),
                                 has_aux=True)
    (loss, metrics), g = grad_fn(p)
    upd, opt = tx.update(g, opt, p)
    return optax.apply_updates(p, upd), opt, loss, metrics

  p, losses = params['chimera'], []
  for _ in range(12):
    p, opt, loss, metrics = train_step(p, opt)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses
  assert {'agree1', 'agree4', 'acc4', 'loss4'} <= set(metrics)


def test_chimera_run_drives_its_decoder(tmp_path, data_dir, trained_workdir):
  cfg = spec_heads.get_config('chimera,test')
  cfg.data.data_dir = data_dir
  cfg.spec.target_workdir = trained_workdir
  cfg.train.update(steps=3, eval_every=3, checkpoint_every=3, eval_batches=1,
                   async_checkpointing=False)
  metrics = trainer.train_and_evaluate(cfg, str(tmp_path))
  assert np.isfinite(metrics['eval']['loss'])
  run = loading.load_model(str(tmp_path))
  target = loading.load_model(trained_workdir)
  assert set(run.extras) == {'chimera'}
  jax.tree.map(np.testing.assert_array_equal, run.params, target.params)  # base frozen
  bench = workbench.Workbench.load(trained_workdir)
  bench.add_heads('chimera', str(tmp_path))
  tok = bench.tokenizer
  prompts = [tok.encode(t, add_bos=True) for t in ('def f(x):\n', 'import o', 'class')]
  results = bench.run([registry.build('ar'), registry.build('chimera', {'gamma': 3})], prompts,
                      max_new_tokens=12)
  ref = [r.tokens for r in results['ar'][0]]
  for name, (rows, _) in results.items():
    assert [r.tokens for r in rows] == ref, name


def test_chimera_recipe_errors(trained_workdir):
  cfg = spec_heads.get_config('chimera,test')
  cfg.spec.target_workdir = trained_workdir
  model = loading.load_model(trained_workdir).model
  cfg.spec.loss = 'hinge'
  with pytest.raises(ValueError, match="spec.loss must be one of .*'mse'"):
    make_objective('chimera_draft', model, cfg)
  cfg.spec.loss, cfg.spec.heads = 'kl', 0
  with pytest.raises(ValueError, match='spec.heads must be >= 1'):
    make_objective('chimera_draft', model, cfg)
