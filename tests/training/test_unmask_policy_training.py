"""The learned-unmasking recipe end to end: a `test`-sized sudoku4 masked-diffusion run, a
policy run on top of it (only the policy trains), and `learned_unmask` decoding from the
policy run through the workbench; plus the recipe's clear errors."""

import jax
import numpy as np
import pytest

from configs import diffusion_tasks, unmask_policy
from data.tasks import exact_match
from training import objectives
from models import Transformer
from testlib import small_config


@pytest.mark.slow
def test_policy_run_trains_only_the_policy_and_decodes(tmp_path):
  from training import trainer  # pylint: disable=g-import-not-at-top
  from workdir import loading  # pylint: disable=g-import-not-at-top
  import workbench  # pylint: disable=g-import-not-at-top
  base = str(tmp_path / 'mdlm')
  c = diffusion_tasks.get_config('sudoku4,mdlm,test')
  c.train.update(steps=4, eval_every=4, checkpoint_every=4, async_checkpointing=False)
  trainer.train_and_evaluate(c, base)
  c = unmask_policy.get_config('sudoku4,test')
  c.policy.diffusion_workdir = base
  c.train.update(steps=2, eval_every=2, checkpoint_every=2, async_checkpointing=False)
  out = trainer.train_and_evaluate(c, str(tmp_path / 'policy'))
  for key in ('solved', 'forwards_per_token', 'reward'):
    assert np.isfinite(out['eval'][key])
  run = loading.load_model(str(tmp_path / 'policy'))
  assert run.kind.heads == ('unmask_policy',) and run.kind.attention == 'bidirectional'
  for a, b in zip(jax.tree.leaves(loading.load_model(base).params), jax.tree.leaves(run.params)):
    np.testing.assert_array_equal(a, b)  # the diffusion model is frozen
  bench = workbench.Workbench.load(str(tmp_path / 'policy'))
  dec = bench.decoder('learned_unmask', settings={'block_size': 17})
  pairs = exact_match.examples(exact_match.get('sudoku4'), 3)
  prompts = [exact_match.prompt_ids(bench.tokenizer, p) for p, _ in pairs]
  rows, stats = bench.run_one(dec, prompts, max_new_tokens=17, batch_size=4)
  assert len(rows) == 3 and 0 < stats.target_forwards <= 3 * 17
  # The base run has no policy: the decoder refuses it by name.
  with pytest.raises(ValueError, match='unmask_policy'):
    workbench.Workbench.load(base).decoder('learned_unmask', settings={'block_size': 17})


def test_recipe_errors_are_clear():
  c = unmask_policy.get_config('sudoku4,test')
  with pytest.raises(ValueError, match='Unknown task'):
    unmask_policy.get_config('chess')
  model = Transformer(small_config())
  bad = c.copy_and_resolve_references()
  with bad.unlocked():
    bad.policy.group = 1
  with pytest.raises(ValueError, match='group must be >= 2'):
    objectives.make_objective('unmask_policy', model, bad)
  obj = objectives.make_objective('unmask_policy', model, c)
  with bad.unlocked():
    bad.policy.group = 2
    bad.policy.diffusion_workdir = ''
  with pytest.raises(ValueError, match='diffusion_workdir must name'):
    objectives.make_objective('unmask_policy', model, bad).init_model_params()
  assert obj.frozen == ('model',)
