"""Learned unmasking: the training rollout is the decoder's loop (same tokens, same forwards),
the policy-gradient pieces against hand computations, the policy learns a bandit, and bad
input is refused."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import decoding
from decoding import base, registry
from decoding.diffusion import canvas
from models import unmask_policy as policy_lib
from models import Transformer, init_params
from models import kind as kind_lib
from testlib import small_config
from training.objectives import unmask_policy as objective_lib

V, MASK, EOS, PAD = 64, 63, 62, 61
B, P, N = 4, 8, 10
PLEN = np.array([8, 5, 3, 6], np.int32)


@pytest.fixture(scope='module')
def setup():
  model = Transformer(small_config(vocab_size=V, num_layers=1))
  params = init_params(model, jax.random.key(0))
  # Larger weights give peaked, varied confidences (the policy sees a spread of features).
  params = jax.tree.map(lambda x: x * 8 if x.ndim == 2 else x, params)
  prompt = jax.random.randint(jax.random.key(1), (B, P), 0, 60)
  policy = policy_lib.init_params(jax.random.key(2), R=N)
  # A policy whose layer contributes (its output layer starts at zero) and that unmasks
  # several positions per step (a low confidence offset).
  kernel = 0.5 * jax.random.normal(jax.random.key(3), policy['out']['kernel'].shape)
  policy = dict(policy, out=dict(policy['out'], kernel=kernel), offset=jnp.asarray(0.1))
  return model, params, prompt, policy


@pytest.mark.parametrize('threshold', [0.5, 0.6])
def test_training_rollout_is_the_decoders_loop(setup, threshold):
  """The objective's greedy rollout commits what `learned_unmask` commits (block = canvas, no
  cache): same tokens, same forwards per row, on a ragged batch."""
  model, params, prompt, policy = setup
  dec = registry.build('learned_unmask', dict(mask_id=MASK, shift=0, block_causal=0,
                                              block_size=N, threshold=threshold),
                       decoding.SamplingConfig())
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(B))
  got = jax.jit(lambda p, t, l, k: dec.generate(
      base.Models(model), p, t, l, k, max_new_tokens=N, cache_size=64, eos_id=EOS,
      pad_id=PAD))({'target': params, policy_lib.HEAD: policy}, prompt, jnp.asarray(PLEN), keys)
  out = jax.jit(lambda: objective_lib.rollout(
      model, params, policy, prompt, jnp.asarray(PLEN), answer_len=N, mask_id=MASK, shift=0,
      eos_id=EOS, pad_id=PAD, rng=None, threshold=threshold))()
  np.testing.assert_array_equal(np.asarray(out['forwards_B']), np.asarray(got.target_forwards_B))
  canvas_tokens = np.asarray(out['canvas_BxN'])
  for b in range(B):
    n = int(got.num_generated_B[b])
    np.testing.assert_array_equal(canvas_tokens[b, :n], np.asarray(got.tokens_BxN)[b, :n])
  # Several tokens per forward happened (the comparison is not of one-per-step decoding).
  assert np.sum(got.num_generated_B) > np.sum(got.target_forwards_B)


def test_log_prob_is_the_bernoulli_likelihood_of_the_recorded_actions(setup):
  model, params, prompt, policy = setup
  out = objective_lib.rollout(model, params, policy, prompt, jnp.asarray(PLEN), answer_len=N,
                              mask_id=MASK, shift=0, eos_id=EOS, pad_id=PAD,
                              rng=jax.random.key(5))
  got = np.asarray(objective_lib.log_prob(policy, out))
  want = np.zeros(B)
  S = out['feats'].shape[0]
  for s in range(S):
    logits = np.asarray(policy_lib.UnmaskPolicy().apply(
        {'params': policy}, out['feats'][s], out['in_range']), np.float64)
    p = 1 / (1 + np.exp(-logits))
    a = np.asarray(out['actions'][s])
    use = np.asarray(out['eligible'][s]) & np.asarray(out['active'][s])[:, None]
    want += np.sum(np.where(use, np.where(a, np.log(p), np.log(1 - p)), 0.0), axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  # Sampled actions are a subset of the eligible positions; active rows stop once done.
  assert not np.any(np.asarray(out['actions']) & ~np.asarray(out['eligible']))
  assert np.all(np.asarray(out['forwards_B']) == np.asarray(out['active']).sum(0))


def test_group_advantages_are_leave_one_out():
  r = jnp.asarray([1.0, 0.0, 0.5, 0.5, 2.0, 4.0, 1.0, 1.0, 4.0])
  a = np.asarray(objective_lib.group_advantages(r, 3))
  want = [1 - 0.25, 0 - 0.75, 0.5 - 0.5, 0.5 - 3, 2 - 2.25, 4 - 1.25, 1 - 2.5, 1 - 2.5, 4 - 1]
  np.testing.assert_allclose(a, want, atol=1e-6)


def test_solved_needs_every_answer_token_up_to_the_reference_eos():
  ref = jnp.asarray([[1, 2, EOS, EOS], [1, 2, 3, 4]])
  rlen = jnp.asarray([3, 4])
  good = jnp.asarray([[1, 2, EOS, MASK], [1, 2, 3, 4]])
  bad = jnp.asarray([[1, 3, EOS, EOS], [1, 2, 3, 5]])
  np.testing.assert_array_equal(objective_lib.solved(good, ref, rlen), [1, 1])
  np.testing.assert_array_equal(objective_lib.solved(bad, ref, rlen), [0, 0])


def test_the_surrogate_moves_the_policy_towards_rewarded_actions(setup):
  """A bandit: one fixed state; unmasking position 0 earns reward 1, not unmasking it 0.
  Gradient steps on the REINFORCE surrogate raise the probability of unmasking it."""
  del setup
  policy = policy_lib.init_params(jax.random.key(7), R=N)
  # Confidence = the initial offset (0.9), output layer zero: the start is p = 1/2.
  feats = jnp.tile(jnp.asarray([[0.9, 0.5, 0.1, 1.0, 1.0, 0.0]]), (1, N, 1))[None]
  in_range = jnp.ones((1, N), bool)
  G = 64
  opt = optax.sgd(0.5)
  state = opt.init(policy)

  def prob0(p):
    return jax.nn.sigmoid(policy_lib.UnmaskPolicy().apply({'params': p}, feats[0],
                                                          in_range)[0, 0])

  start = float(prob0(policy))
  for i in range(20):
    logits = policy_lib.UnmaskPolicy().apply({'params': policy}, feats[0], in_range)
    a = jax.random.uniform(jax.random.key(i), (G, N)) < jax.nn.sigmoid(logits)
    recs = dict(feats=jnp.broadcast_to(feats, (1, G, N, 6)), in_range=in_range,
                actions=a[None], eligible=jnp.ones((1, G, N), bool), active=jnp.ones((1, G), bool))
    adv = objective_lib.group_advantages(a[:, 0].astype(jnp.float32), G)
    grads = jax.grad(lambda p: -jnp.mean(adv * objective_lib.log_prob(p, recs)))(policy)
    updates, state = opt.update(grads, state)
    policy = optax.apply_updates(policy, updates)
  assert float(prob0(policy)) > max(start + 0.2, 0.8)


def test_missing_policy_and_bad_settings_are_refused():
  dec = registry.build('learned_unmask', {}, decoding.SamplingConfig())
  mdlm = kind_lib.ModelKind(attention='bidirectional', mask_id=MASK)
  with pytest.raises(ValueError, match='unmask_policy'):
    dec.for_model({'target': mdlm})
  ok = dec.for_model({'target': dataclasses.replace(mdlm, heads=('unmask_policy',))})
  assert ok.mask_id == MASK
  with pytest.raises(ValueError, match='threshold'):
    dataclasses.replace(ok, threshold=1.0).validate(V)


def test_features_ignore_positions_that_are_not_masked():
  stats = canvas.TokenStats(token=jnp.zeros((1, 4), jnp.int32),
                            conf=jnp.asarray([[0.9, 0.8, 0.7, 0.6]]),
                            entropy=jnp.ones((1, 4)), margin=jnp.full((1, 4), 0.5))
  el = jnp.asarray([[True, False, True, False]])
  f = np.asarray(policy_lib.features(stats.conf, stats.margin, stats.entropy, el,
                                     jnp.ones((1, 4), bool), V))
  np.testing.assert_allclose(f[0, :, 0], [0.9, 0, 0.7, 0], atol=1e-6)
  np.testing.assert_allclose(f[0, :, 3], [1, 0, 1, 0])
  np.testing.assert_allclose(f[0, :, 4], 0.5)


def test_sudoku_reward_scores_like_the_task():
  """The jitted sudoku reward against `sudoku.is_valid_solution` on valid grids and on grids
  with one wrong digit (in a blank or a clue cell) or a non-digit (byte tokens)."""
  from data.tasks import sudoku
  rng = np.random.default_rng(0)
  enc = lambda s: [ord(c) for c in s]
  digits = jnp.asarray(enc('1234'))
  rows, prompts, want = [], [], []
  for i in range(40):
    puzzle, grid = sudoku.make_puzzle(rng, 2, 6, 12)
    answer = list(grid)
    if i % 4 == 1:  # a wrong digit somewhere
      j = int(rng.integers(16))
      answer[j] = str(int(answer[j]) % 4 + 1)
    elif i % 4 == 2:  # a non-digit
      answer[int(rng.integers(16))] = 'x'
    answer = ''.join(answer)
    prompts.append([1] + enc(puzzle) + [2])
    rows.append(enc(answer) + [EOS])
    want.append(float(sudoku.is_valid_solution(puzzle, answer)))
  got = objective_lib.sudoku_solved(jnp.asarray(rows), jnp.asarray(prompts), digits, ord('.'), 2)
  np.testing.assert_array_equal(np.asarray(got), want)
  assert 0 < sum(want) < len(want)


def test_untrained_policy_is_fast_dllm_at_its_offset(setup):
  """The warm start (output layer zero) at policy threshold 0.5 unmasks exactly what
  Fast-dLLM does at threshold = the offset (the claim benchmarks/unmask_policy.py makes)."""
  model, params, prompt, _ = setup
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(B))
  common = dict(mask_id=MASK, shift=0, block_causal=0, block_size=N)
  fresh = policy_lib.init_params(jax.random.key(9), R=N)
  out = {}
  for offset in (0.0975, 0.098):  # inside this model's spread of confidences
    pol = dict(fresh, offset=jnp.asarray(offset))
    for name, extra in (('learned_unmask', {}), ('fast_dllm', dict(threshold=offset))):
      dec = registry.build(name, {**common, **extra}, decoding.SamplingConfig())
      out[name, offset] = jax.device_get(dec.generate(
          base.Models(model), {'target': params, policy_lib.HEAD: pol}, prompt,
          jnp.asarray(PLEN), keys, max_new_tokens=N, cache_size=64, eos_id=EOS, pad_id=PAD))
    a, b = out['learned_unmask', offset], out['fast_dllm', offset]
    np.testing.assert_array_equal(a.tokens_BxN, b.tokens_BxN)
    np.testing.assert_array_equal(a.target_forwards_B, b.target_forwards_B)
  # The two offsets decode differently (the comparison is not of a degenerate rule).
  assert not np.array_equal(out['fast_dllm', 0.0975].target_forwards_B,
                            out['fast_dllm', 0.098].target_forwards_B)
