"""Typical acceptance (`verifier=typical`, Medusa's lossy rule): the walk against a brute force
over random trees, the next token drawn from the thresholded distribution, greedy output equal
to AR's, and every token of a sampled run at or above its threshold under the target."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import testlib
from decoding import SamplingConfig, registry, run_decoder
from decoding import sampling as sampling_lib
from decoding.speculative import trees, verify
import spec_cases
from spec_cases import CACHE, N_NEW, PAD, PROMPTS


def _brute_force(parents, depths, tokens, logp, eps, alpha, depth):
  """(path, n, kept tokens at the end) by enumerating every node's path."""
  p = np.exp(logp)
  ent = -np.sum(np.where(p > 0, p * logp, 0.0), axis=-1)
  thr = np.minimum(eps, alpha * np.exp(-ent))
  T = len(parents)
  best = (0, 0.0, 0)  # (depth, loglik, node)
  for t in range(1, T):
    path, u = [], t
    while u > 0:
      path.append(u)
      u = parents[u]
    if depths[t] > depth or not all(p[parents[u], tokens[u]] > thr[parents[u]] for u in path):
      continue
    ll = sum(logp[parents[u], tokens[u]] for u in path)
    if (depths[t], ll) > best[:2]:
      best = (depths[t], ll, t)
  n, _, end = best
  path, u = [], end
  while u >= 0:
    path.append(u)
    u = parents[u]
  path = path[::-1] + [-1] * (depth + 1 - len(path))
  return path, n, set(np.flatnonzero(p[end] >= thr[end]).tolist())


@pytest.mark.parametrize('seed', range(6))
def test_typical_walk_equals_a_brute_force(seed):
  """Random trees (several passing paths, ties broken by likelihood), random target
  distributions of varied entropy: the deepest all-passing path, its likeliest among equals,
  and the next token's support are the brute force's."""
  rng = np.random.default_rng(seed)
  B, T, V, depth = 3, 12, 16, 4
  parents = [-1] + [int(rng.integers(0, i)) for i in range(1, T)]
  depths = [0] * T
  for i in range(1, T):
    depths[i] = depths[parents[i]] + 1
  template = trees.Template(tuple(parents), tuple([0] * T))
  logits = rng.normal(size=(B, T, V)) * rng.choice([0.5, 2.0, 5.0], size=(B, T, 1))
  logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)))
  # Tokens: mostly each parent's likeliest few (so that some pass), some random.
  order = np.argsort(-logp, axis=-1)
  tokens = np.zeros((B, T), np.int32)
  for b, t in itertools.product(range(B), range(1, T)):
    tokens[b, t] = order[b, parents[t], rng.integers(0, 3)] if rng.random() < 0.8 else \
        rng.integers(0, V)
  tree = trees.from_template(template, jnp.asarray(tokens))
  path, n, res = jax.jit(verify.typical_verify, static_argnums=(2, 3, 4))(
      tree, jnp.asarray(logp), depth, 0.09, 0.3)
  for b in range(B):
    want_path, want_n, want_kept = _brute_force(parents, depths, tokens[b], logp[b], 0.09, 0.3,
                                                depth)
    assert int(n[b]) == want_n
    np.testing.assert_array_equal(np.asarray(path[b]), want_path)
    assert set(np.flatnonzero(np.isfinite(np.asarray(res[b]))).tolist()) == want_kept


def test_next_token_follows_the_thresholded_distribution():
  """10^5 draws of the next token after an empty path: each token's frequency is its
  probability renormalised over the tokens at or above the threshold (TV < 0.01), nothing
  below it is ever drawn."""
  V = 12
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(V,)) * 1.5, jnp.float32)
  logp = jax.nn.log_softmax(logits)
  tree = trees.from_template(trees.chain(1), jnp.zeros((1, 2), jnp.int32),
                             jnp.array([[True, False]]))
  _, n, res = verify.typical_verify(tree, jnp.broadcast_to(logp, (1, 2, V)), 1, 0.09, 0.3)
  assert int(n[0]) == 0
  keys = jax.random.split(jax.random.key(0), 100_000)
  draws = np.asarray(jax.jit(jax.vmap(lambda k: sampling_lib.sample_from_log_probs(
      k, res[0][None])[0]))(keys))
  p = np.exp(np.asarray(logp))
  thr = float(verify.typical_thresholds(logp[None, None], 0.09, 0.3)[0, 0])
  keep = p >= thr
  assert 1 < keep.sum() < V  # the threshold cuts something and keeps a choice
  want = np.where(keep, p, 0.0) / p[keep].sum()
  got = np.bincount(draws, minlength=V) / len(draws)
  assert not got[~keep].any()
  assert 0.5 * np.abs(got - want).sum() < 0.01


@pytest.fixture(scope='module')
def setup():
  return spec_cases.build_setup()


@pytest.mark.parametrize('name,settings', [
    ('medusa', dict(branching='3,2,1', verifier='typical')),
    ('speculative', dict(draft_workdir='x', gamma=3, verifier='typical')),
])
def test_greedy_typical_acceptance_equals_ar(setup, name, settings):
  """At temperature 0 typical acceptance is greedy verification: AR's tokens on a ragged batch
  (the decoder still says it is lossy)."""
  models, params, eos, ref = setup
  params = spec_cases.params_for(name if name == 'medusa' else 'chain', params)
  dec = registry.build(name, settings)
  assert not dec.is_lossless()
  rows, stats = run_decoder(dec, models, params, PROMPTS, max_new_tokens=N_NEW,
                            cache_size=CACHE, eos_id=eos, pad_id=PAD)
  assert [r.tokens for r in rows] == ref and not stats.lossless


def _below_threshold(models, params, prompts, rows, eps, alpha, sampling):
  """How many generated tokens fall below their typical threshold under the target's
  distribution after `sampling`, teacher-forced (and how many were checked)."""
  target, tp = models.target, params['target']
  bad = total = 0
  for prompt, row in zip(prompts, rows):
    seq = jnp.asarray([list(prompt) + row.tokens], jnp.int32)
    logits = target.apply({'params': tp}, seq).logits_BxTxV[0]
    logp = sampling_lib.log_probs(logits, sampling)
    thr = np.asarray(verify.typical_thresholds(logp[None], eps, alpha)[0])
    p = np.exp(np.asarray(logp))
    for i, tok in enumerate(row.tokens):
      pos = len(prompt) - 1 + i  # the position whose logits predict this token
      total += 1
      bad += int(p[pos, tok] < thr[pos] * (1 - 1e-4))
  return bad, total


def test_sampled_tokens_are_all_typical(setup):
  """Sampled at temperature 1, every token typical acceptance emits (accepted drafts and the
  drawn next tokens alike) has target probability at or above its threshold; lossless
  verification of the same drafts emits tokens below it (so the check can fail)."""
  models, params, eos, _ = setup
  params = spec_cases.params_for('medusa', params)
  sampling = SamplingConfig(temperature=1.0)
  counts = {}
  for verifier in ('typical', 'deterministic'):
    dec = dataclasses.replace(registry.build('medusa', dict(branching='3,2,1',
                                                           verifier=verifier)),
                              sampling=sampling)
    rows, stats = run_decoder(dec, models, params, PROMPTS, max_new_tokens=N_NEW,
                              cache_size=CACHE, eos_id=eos, pad_id=PAD, seed=3)
    counts[verifier] = _below_threshold(models, params, PROMPTS, rows, 0.09, 0.3, sampling)
    assert stats.lossless == (verifier != 'typical')
  assert counts['typical'][0] == 0 and counts['typical'][1] > 20
  assert counts['deterministic'][0] > 0


@pytest.mark.parametrize('settings,words', [
    (dict(verifier='typical', typical_epsilon=0.0), 'typical_epsilon'),
    (dict(verifier='typical', typical_alpha=-1.0), 'typical_alpha'),
])
def test_bad_typical_settings_are_refused(settings, words):
  with pytest.raises(ValueError, match=words):
    registry.build('medusa', settings)
