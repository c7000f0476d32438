"""PPD prompt tokens trained on a frozen target (configs/ppd.py): only the K x D embeddings
change, the distillation loss falls, the run drives decoder `ppd` (greedy == AR)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import workbench
from configs import ppd as ppd_config
from training import trainer
from training import train_state as state_lib
from training.objectives import make_objective
from workdir import loading

STEPS = 3


@pytest.fixture(scope='module')
def run(tmp_path_factory, data_dir, trained_workdir):
  cfg = ppd_config.get_config('3,test')
  cfg.data.data_dir = data_dir
  cfg.spec.target_workdir = trained_workdir
  cfg.train.update(steps=STEPS, eval_every=STEPS, checkpoint_every=STEPS, eval_batches=1,
                   async_checkpointing=False)
  workdir = str(tmp_path_factory.mktemp('ppd'))
  return cfg, workdir, trainer.train_and_evaluate(cfg, workdir)


def test_prompt_tokens_train_on_a_frozen_target(run, trained_workdir):
  cfg, workdir, metrics = run
  target = loading.load_model(trained_workdir)
  ppd_run = loading.load_model(workdir)
  assert set(ppd_run.extras) == {'ppd'} and 'ppd' in ppd_run.kind.heads
  jax.tree.map(np.testing.assert_array_equal, ppd_run.params, target.params)  # base frozen
  prompts = ppd_run.extras['ppd']['prompts']
  assert prompts.shape == (3, target.model.cfg.d_model)
  init = state_lib.init_params(target.model, make_objective('ppd_prompts', target.model, cfg),
                               jax.random.key(cfg.seed))['ppd']  # the run's initial prompts
  assert not np.allclose(init['prompts'], prompts)
  assert np.isfinite(metrics['eval']['loss']) and 'top1_3' in metrics['eval']


def test_distillation_loss_decreases():
  """The test preset's objective on a target with spread logits: a few Adam steps on the
  prompt tokens alone lower the loss on a fixed batch (the test target of the suite is too
  close to uniform for that: its KL starts near 0)."""
  import optax  # pylint: disable=g-import-not-at-top
  from models import Transformer, init_params  # pylint: disable=g-import-not-at-top
  cfg = ppd_config.get_config('3,test')
  mcfg = trainer.model_config(cfg, 64)
  model = Transformer(mcfg)
  spread = Transformer(dataclasses.replace(mcfg, init_std=0.3))
  params = {'model': init_params(spread, jax.random.key(0))}
  objective = make_objective('ppd_prompts', model, cfg)
  params.update(objective.extras(jax.random.key(1)))
  tokens = jax.random.randint(jax.random.key(2), (8, cfg.data.seq_len + 1), 0, 64)
  tx = optax.adam(cfg.train.learning_rate)

  @jax.jit
  def step(p, opt):
    loss, grads = jax.value_and_grad(lambda q: objective.loss_fn(
        {'model': params['model'], 'ppd': q}, {'tokens': tokens}, None)[0])(p)
    updates, opt = tx.update(grads, opt)
    return optax.apply_updates(p, updates), opt, loss

  p, opt = params['ppd'], tx.init(params['ppd'])
  losses = []
  for _ in range(10):
    p, opt, loss = step(p, opt)
    losses.append(float(loss))
  assert losses[-1] < 0.85 * losses[0], losses


def test_the_run_attaches_to_the_target(run, trained_workdir):
  """What sample.py does: the prompt tokens attach to the target (`add_heads`) and the ppd
  decoder accepts it (decoding itself: tests/decoding/test_ppd.py)."""
  _, workdir, _ = run
  bench = workbench.Workbench.load(trained_workdir)
  with pytest.raises(ValueError, match='ppd heads'):
    bench.decoder('ppd')
  bench.add_heads('ppd', workdir)
  assert bench.decoder('ppd').name == 'ppd' and 'ppd' in bench.kind.heads
  models, params = bench.models_for(bench.decoder('ppd'))
  assert params['ppd']['prompts'].shape == (3, models.target.cfg.d_model)


def test_recipe_errors(trained_workdir):
  cfg = ppd_config.get_config('3,test')
  assert cfg.spec.heads == 3 and cfg.objective == 'ppd_prompts'
  assert ppd_config.get_config('2').spec.heads == 2
  model = loading.load_model(trained_workdir).model
  cfg.spec.target_workdir = ''
  with pytest.raises(ValueError, match='target_workdir'):
    make_objective('ppd_prompts', model, cfg).init_model_params()
  with pytest.raises(ValueError, match='spec'):
    make_objective('ppd_prompts', model, None)
