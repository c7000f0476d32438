"""Lookahead decoding's lookahead branch: its chains predict what the target predicts for
them on their own (prefix, root, the chain at its positions), the tree's outputs do not see
them, the pool receives each chain with its prediction and the chains move on by it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decoding import registry
import spec_cases
from spec_cases import PROMPTS


@pytest.fixture(scope='module')
def setup():
  return spec_cases.build_setup()


def _state_after(dec, models, params, eos, steps):
  init, step, lens = spec_cases.step_fn(dec, models, params, eos)
  s = init(params)
  states = [s]
  for _ in range(steps):
    s = step(params, s)
    states.append(s)
  return states, lens


def test_chain_predictions_equal_the_target_on_each_chain_alone(setup):
  """After a step, each chain's prediction (`ahead`) is the target's argmax after the
  committed text, then the chain's tokens at positions root + c + 1 .. (a plain forward over
  that one sequence, no cache); and the tree's logits equal those of a forward without the
  branch over the same tree and cache."""
  models, params, eos, _ = setup
  dec = registry.build('lookahead', dict(lookahead=3, ngram=4))
  states, lens = _state_after(dec, models, params, eos, 3)
  before, after = states[-2], states[-1]
  target, tp = models.target, params['target']
  for b in range(len(PROMPTS)):
    if bool(before.progress.done_B[b]):
      continue
    n = int(before.progress.num_generated_B[b])
    committed = list(PROMPTS[b]) + list(np.asarray(before.progress.tokens_BxN[b, :n]))
    base = len(committed) - 1  # the root's position
    chains = np.asarray(before.drafter.chains_BxCxL[b])
    for c, chain in enumerate(chains):
      tokens = jnp.asarray([committed + list(chain)], jnp.int32)
      pos = jnp.asarray([list(range(base + 1)) + [base + 1 + c + l for l in range(len(chain))]])
      logits = target.apply({'params': tp}, tokens, pos).logits_BxTxV[0, -1]
      assert int(after.drafter.ahead_BxC[b, c]) == int(jnp.argmax(logits)), (b, c)
    np.testing.assert_array_equal(np.asarray(after.drafter.chains_BxCxL[b]),
                                  np.concatenate([chains[:, 1:],
                                                  np.asarray(after.drafter.ahead_BxC[b])[:, None]],
                                                 axis=1))


def test_the_tree_does_not_see_the_branch(setup):
  """The tree's logits from the forward with the lookahead branch equal those without it."""
  models, params, eos, _ = setup
  with_branch = registry.build('lookahead', dict(lookahead=4))
  without = registry.build('lookahead', dict(lookahead=0))
  states, lens = _state_after(with_branch, models, params, eos, 2)
  s = states[-1]
  outs = []
  for dec in (with_branch, without):
    drafter, env, _ = spec_cases._loop_env(dec, models)  # pylint: disable=protected-access
    base = lens + s.progress.num_generated_B - 1
    active = ~s.progress.done_B
    e = env(params)
    tree = drafter.propose(e, s.drafter, s.cache, s.last_B, base, active)[0]
    out, _ = jax.jit(lambda st, c, t: drafter.target_forward(e, st, c, t, base, active))(
        s.drafter, s.cache, tree)
    outs.append(np.asarray(out.logits_BxTxV))
  assert outs[0].shape == outs[1].shape
  live = np.asarray(~s.progress.done_B)
  np.testing.assert_allclose(outs[0][live], outs[1][live], atol=2e-5)


def test_the_pool_receives_each_chain_and_its_prediction(setup):
  """With room for every n-gram of a step (pool 32), each chain's n-gram (its first token as
  key; the rest and the prediction after it as continuation) is in the pool after the step."""
  models, params, eos, _ = setup
  dec = registry.build('lookahead', dict(lookahead=3, ngram=3, pool=32))
  states, _ = _state_after(dec, models, params, eos, 2)
  before, after = states[-2], states[-1]
  pool, ok = np.asarray(after.drafter.pool_BxVxPxL), np.asarray(after.drafter.pool_ok_BxVxP)
  for b in range(len(PROMPTS)):
    if bool(before.progress.done_B[b]):
      continue
    for chain, nxt in zip(np.asarray(before.drafter.chains_BxCxL[b]),
                          np.asarray(after.drafter.ahead_BxC[b])):
      cont = list(chain[1:]) + [int(nxt)]
      held = [list(pool[b, chain[0], i]) for i in range(pool.shape[2]) if ok[b, chain[0], i]]
      assert cont in held, (b, chain, nxt)


def test_lookahead_setting_is_checked():
  with pytest.raises(ValueError, match='lookahead must be >= 0'):
    registry.build('lookahead', dict(lookahead=-1))
