"""Adaptive draft length: the policy against its formula, lengths that really change during a
run with output equal to AR's (the ragged-batch greedy test in test_spec_decoders.py runs the
adaptive decoders too), the measured costs, and clear errors."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testlib import small_config
from decoding import Models, registry, run_decoder
from decoding.speculative import adaptive
from decoding.speculative import early_exit
from models import Transformer, heads, init_params

V = 48
PROMPTS = [[1, 5, 9, 3, 1, 5, 9, 3, 1, 5], [2, 7], [4, 4, 8, 1, 4, 4, 8, 1, 4], [3, 3, 3]]
N_NEW = 40


@pytest.fixture(scope='module')
def lm():
  cfg = small_config(vocab_size=V, num_layers=2)
  model = Transformer(cfg)
  # A peaked model that repeats itself, so prompt lookup is sometimes right.
  params = init_params(Transformer(small_config(vocab_size=V, num_layers=2, init_std=0.5)),
                       jax.random.key(3))
  return Models(model), {'target': params}


def test_ladder_and_chain_lengths():
  assert adaptive.ladder(6, with_ar=True) == (0, 1, 2, 3, 4, 6)
  assert adaptive.ladder(16, with_ar=False) == (1, 2, 3, 4, 6, 9, 13, 16)
  assert adaptive.ladder(1, with_ar=False) == (1,)
  dec = registry.build('prompt_lookup', dict(gamma=4, adaptive=True))
  d = dec.get_drafter()
  assert d.gammas == (0, 1, 2, 3, 4) and d.variants[0] is None
  assert [v.gamma for v in d.variants[1:]] == [1, 2, 3, 4]
  assert d.max_depth == 4 and d.max_nodes == 5 and d.is_chain


@pytest.mark.parametrize('seed', range(3))
def test_choice_maximises_expected_tokens_per_cost(seed):
  rng = np.random.default_rng(seed)
  gammas = (0, 1, 2, 3, 4, 6)
  costs = tuple(np.round(np.cumsum(np.r_[1.0, rng.uniform(0.0, 0.8, len(gammas) - 1)]), 2))
  explore = (0.0, 1.0, 2.0)[seed]
  d = adaptive.AdaptiveChain(variants=(None,) * len(gammas), gammas=gammas, costs=costs,
                             explore=explore)
  for _ in range(20):
    acc, tests = rng.uniform(0, 30), 0.0
    tests = acc + rng.uniform(0, 30)
    state = adaptive.AdaptState(inner=(), accepted=jnp.float32(acc), tests=jnp.float32(tests),
                                current=jnp.int32(-1), choices_BxV=jnp.zeros((1, 6), jnp.int32),
                                phases_B=jnp.zeros((1,), jnp.int32))
    a = (acc + 0.5) / (tests + 1)
    bound = min(a + explore * np.sqrt(a * (1 - a) / (tests + 1)), 0.999)
    est = [sum(a ** k for k in range(g + 1)) / c for g, c in zip(gammas, costs)]
    opt = [sum(bound ** k for k in range(g + 1)) / c for g, c in zip(gammas, costs)]
    # drafting lengths ranked by the estimate, weighed against AR at the optimistic bound
    score = [est[0]] + [e * max(opt[1:]) / max(est[1:]) for e in est[1:]]
    assert int(d.choose(state)) == int(np.argmax(score))
    # Hysteresis: a current length within `margin` of the best is kept, a worse one is not;
    # an AR step (gamma 0), the best, is taken as soon as it scores higher (margin 1).
    best = int(np.argmax(score))
    m = 1.0 if gammas[best] == 0 else d.margin
    for cur in range(len(gammas)):
      got = int(d.choose(state.replace(current=jnp.int32(cur))))
      want = cur if max(score) <= m * score[cur] * (1 + 1e-6) else best
      if abs(max(score) - m * score[cur]) > 1e-4:  # away from the float boundary
        assert got == want, (cur, score)


def _fresh(n):
  return adaptive.AdaptState(inner=(), accepted=jnp.float32(0.0), tests=jnp.float32(0.0),
                             current=jnp.int32(-1), choices_BxV=jnp.zeros((1, n), jnp.int32),
                             phases_B=jnp.zeros((1,), jnp.int32))


def test_exploration_tries_drafting_whose_break_even_is_above_one_half():
  """Forwards over 2 and 3 tokens cost 1.6 and 1.9 AR steps: drafting pays only above
  alpha ~ 0.6. The estimate alone starts at 1/2 and, with no drafts ever tested, stays there:
  only AR steps would ever run. The optimistic bound makes the first step draft; with
  evidence of low acceptance it returns to AR, and as AR steps shrink the counts the bound
  brings drafting back."""
  d = adaptive.AdaptiveChain(variants=(None,) * 3, gammas=(0, 1, 2), costs=(1.0, 1.6, 1.9))
  assert int(dataclasses.replace(d, explore=0.0).choose(_fresh(3))) == 0
  # Without evidence the bound is 1: drafting is tried, at the length the estimate (1/2)
  # favours, 1 (1.5 / 1.6 > 1.75 / 1.9), not the longest.
  assert int(d.choose(_fresh(3))) == 1
  low = _fresh(3).replace(accepted=jnp.float32(6.0), tests=jnp.float32(30.0))
  assert int(d.choose(low)) == 0
  shrunk = low.replace(accepted=low.accepted * 0.97 ** 150, tests=low.tests * 0.97 ** 150)
  assert int(d.choose(shrunk)) > 0


def test_length_changes_during_a_run_and_output_equals_ar(lm):
  models, params = lm
  ref, _ = run_decoder(registry.build('ar'), models, params, PROMPTS, max_new_tokens=N_NEW,
                       cache_size=128, eos_id=-1, pad_id=0)
  # Drafts cost little beyond one token here, so the length follows acceptance.
  dec = registry.build('prompt_lookup', dict(gamma=6, adaptive=True,
                                             costs='1,1.2,1.3,1.4,1.5,1.6'))
  rows, stats = run_decoder(dec, models, params, PROMPTS, max_new_tokens=N_NEW,
                            cache_size=128, eos_id=-1, pad_id=0)
  assert [r.tokens for r in rows] == [r.tokens for r in ref]
  used = np.asarray(stats.extra['adaptive_steps'])
  assert used.sum() == stats.extra['spec_steps']
  assert (used > 0).sum() >= 2, used  # more than one length ran
  # Forwards that cost as much as the drafts are worth: only AR steps, no drafts at all.
  dec = registry.build('prompt_lookup', dict(gamma=4, adaptive=True, costs='1,9,9,9,9'))
  rows, stats = run_decoder(dec, models, params, PROMPTS, max_new_tokens=N_NEW,
                            cache_size=128, eos_id=-1, pad_id=0)
  assert [r.tokens for r in rows] == [r.tokens for r in ref]
  assert stats.extra['drafted_tokens'] == 0
  assert stats.target_forwards == stats.generated


def test_jacobi_windows_of_several_lengths_share_one_state(lm):
  """Jacobi's state (its guesses) is sized by the longest window, so the window adapts like a
  draft length: more than one length runs, the output equals AR's, and every variant's
  state has the longest one's shape."""
  models, params = lm
  ref, _ = run_decoder(registry.build('ar'), models, params, PROMPTS, max_new_tokens=N_NEW,
                       cache_size=128, eos_id=-1, pad_id=0)
  dec = registry.build('jacobi', dict(window=6, adaptive=True,
                                      costs='1,1.05,1.1,1.15,1.2,1.25'))
  drafter = dec.get_drafter()
  assert [v.window for v in drafter.variants[1:]] == [1, 2, 3, 4, 6]
  assert {v.state_nodes for v in drafter.variants[1:]} == {7}
  rows, stats = run_decoder(dec, models, params, PROMPTS, max_new_tokens=N_NEW,
                            cache_size=128, eos_id=-1, pad_id=0)
  assert [r.tokens for r in rows] == [r.tokens for r in ref]
  used = np.asarray(stats.extra['adaptive_steps'])
  assert used.sum() == stats.extra['spec_steps']
  assert (used > 0).sum() >= 2, used


def test_measured_costs_are_relative_and_non_decreasing(lm):
  models, params = lm
  costs = adaptive.calibrate(models.target, params['target'], (0, 1, 2, 4, 8), batch=2,
                             cache_size=64, seconds=0.005, trials=2)
  assert len(costs) == 5 and costs[0] == 1.0
  assert all(a <= b for a, b in zip(costs, costs[1:])), costs
  dec = registry.build('prompt_lookup', dict(gamma=4, adaptive=True))
  ready = dec.prepare(models, params, batch=2, cache_size=64)
  assert len(ready.get_drafter().costs) == 5 and ready.costs
  assert registry.build('prompt_lookup').prepare(models, params, batch=1, cache_size=64) == \
      registry.build('prompt_lookup')  # non-adaptive decoders measure nothing


def test_bad_settings_give_clear_errors(lm, monkeypatch):
  models, params = lm
  with pytest.raises(ValueError, match='drafts a tree'):
    registry.build('token_recycling', dict(adaptive=True))
  with pytest.raises(ValueError, match='add adaptive=1'):
    registry.build('prompt_lookup', dict(costs='1,2'))
  with pytest.raises(ValueError, match='one relative forward cost per chain length'):
    registry.build('prompt_lookup', dict(gamma=2, adaptive=True, costs='1,2'))
  with pytest.raises(ValueError, match='DEL picks its own exit layer and draft length'):
    registry.build('del', dict(adaptive=True))
  # A drafter whose state is sized by its chain length without saying so is caught when the
  # loop compares the variants' states.
  original = early_exit.EarlyExitDrafter.init

  def sized_by_gamma(self, env, prefill, first_B):
    return original(dataclasses.replace(self, state_nodes=0), env, prefill, first_B)
  monkeypatch.setattr(early_exit.EarlyExitDrafter, 'init', sized_by_gamma)
  with pytest.raises(ValueError, match='depends on its chain length'):
    run_decoder(registry.build('layerskip', dict(exit_layer=1, adaptive=True,
                                                 costs='1,1,1,1,1')),
                models, params, PROMPTS, max_new_tokens=8, cache_size=128, eos_id=-1, pad_id=0)


def test_early_exit_step_cost_counts_its_draft_layers(lm):
  """LayerSkip drafts through the target's first E of L layers, so a step of length g costs
  (g + 1) E / L + (1 - E / L) c(g + 1) AR steps; the choice uses that, and an AR step (length
  0) is a plain forward. Kangaroo's adapter must see every token: no AR step."""
  models, _ = lm  # 2 layers
  d = registry.build('layerskip', dict(exit_layer=1, gamma=3, adaptive=True,
                                       costs='1,1.2,1.5,2')).get_drafter().resolve(models)
  d = dataclasses.replace(d, explore=0.0)  # the estimate alone, 0.75 below
  assert d.gammas == (0, 1, 2, 3)
  want = [1.0] + [(g + 1) * 0.5 + 0.5 * c for g, c in ((1, 1.2), (2, 1.5), (3, 2.0))]
  np.testing.assert_allclose(adaptive.step_costs(d.variants, d.costs), want, rtol=1e-6)
  k = registry.build('kangaroo', dict(exit_layer=1, gamma=3, adaptive=True))
  assert k.get_drafter().gammas == (1, 2, 3)
  # alpha = 0.75: by step cost g = 1 is best (1.75 / 1.6); by the target forward alone it
  # would be g = 2 (2.31 / 1.5): the draft layers' work decides.
  state = adaptive.AdaptState(inner=(), accepted=jnp.float32(29.5), tests=jnp.float32(39.0),
                              current=jnp.int32(-1), choices_BxV=jnp.zeros((1, 4), jnp.int32),
                              phases_B=jnp.zeros((1,), jnp.int32))
  tokens = [sum(0.75 ** k for k in range(g + 1)) for g in d.gammas]
  assert int(np.argmax(np.divide(tokens, want))) == 1
  assert int(np.argmax(np.divide(tokens, d.costs))) == 2
  assert int(d.choose(state)) == 1


@pytest.mark.parametrize('name,settings,lengths', [
    ('layerskip', dict(exit_layer=1, costs='1,0.7,0.7,0.7,0.7'), 2),  # AR steps and drafts
    ('kangaroo', dict(exit_layer=1, costs='0.1,0.1,0.1,0.1'), 1),     # (a random adapter)
])
def test_early_exit_lengths_change_during_a_run_and_output_equals_ar(lm, name, settings,
                                                                      lengths):
  """Every chain length shares one state (sized by the longest); with these costs LayerSkip
  switches between AR steps and drafting as acceptance moves, and the output is AR's."""
  models, params = lm
  ref, _ = run_decoder(registry.build('ar'), models, params, PROMPTS, max_new_tokens=N_NEW,
                       cache_size=128, eos_id=-1, pad_id=0)
  dec = registry.build(name, dict(settings, gamma=4, adaptive=True))
  assert {v.state_nodes for v in dec.get_drafter().variants if v is not None} == {5}
  if name == 'kangaroo':  # an adapter of random weights
    cfg = models.target.cfg
    h, emb = jnp.zeros((1, 2, cfg.d_model)), params['target']['embed']['embedding']
    params = {**params, 'kangaroo': nn.unbox(heads.KangarooAdapter(cfg).init(
        jax.random.key(4), h, jnp.zeros((1, 2), jnp.int32), emb)['params'])}
  rows, stats = run_decoder(dec, models, params, PROMPTS, max_new_tokens=N_NEW,
                            cache_size=128, eos_id=-1, pad_id=0)
  assert [r.tokens for r in rows] == [r.tokens for r in ref]
  used = np.asarray(stats.extra['adaptive_steps'])
  assert used.sum() == stats.extra['spec_steps']
  assert (used > 0).sum() >= lengths, used
  # one length per phase: every row has one at least, and each length used is one
  phases = stats.extra['adaptive_phases']
  assert max(len(PROMPTS), lengths) <= phases <= stats.extra['spec_steps'], phases
