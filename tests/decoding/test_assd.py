"""Any-subset AR models and ASSD, checked against an independent sequential reference that
physically reorders the revealed tokens (no two-stream mask):

  the `as_arm` loss is the exact NLL of the row under its order;
  ASSD greedy equals sequential greedy decoding token for token (both orders, ragged prompts,
  <eos>), with at most one forward per token (+1);
  ASSD sampled follows the enumerated joint (chi-square, fixed seed), a test with power:
  the joint is far from the product of marginals that unverified drafts would sample;
  bad input is refused.
"""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats as scipy_stats

import decoding
from decoding import base, registry
from decoding.diffusion import assd as assd_lib
from models.kind import ModelKind
from models import Transformer, init_params
from testlib import small_config
from training.objectives import as_arm
from training.objectives import diffusion_lib as lib

V, MASK, EOS, PAD = 64, 63, 38, 61  # EOS: a token the test model emits early
B, P, N = 3, 8, 10
PLEN = np.array([8, 5, 3], np.int32)


def reference_logp(model, params, prompt, revealed, query_pos, mask_id):
  """log p(x at query_pos | prompt, revealed) by physical reordering: the prompt, then the
  revealed (position, token) pairs in reveal order, then one <mask> query. The prompt tokens
  see each other; a revealed token sees the prompt and the ones revealed no later; the query
  sees everything. Batched over rows of equal shape: prompt [R, Pr], revealed tokens and
  positions [R, n] each, query_pos [R]. Returns [R, V] (mask excluded, float32)."""
  R, Pr = prompt.shape
  tok_pos = revealed[1] if revealed is not None else np.zeros((R, 0), np.int32)
  toks = revealed[0] if revealed is not None else np.zeros((R, 0), np.int32)
  n = toks.shape[1]
  tokens = np.concatenate([prompt, toks, np.full((R, 1), mask_id)], axis=1)
  positions = np.concatenate([np.broadcast_to(np.arange(Pr), (R, Pr)), tok_pos,
                              np.asarray(query_pos)[:, None]], axis=1)
  T = Pr + n + 1
  i, j = np.arange(T)[:, None], np.arange(T)[None, :]
  mask = (j <= i) | (j < Pr)
  return _last_logp(model, params, jnp.asarray(tokens, jnp.int32),
                    jnp.asarray(positions, jnp.int32), jnp.asarray(mask), mask_id)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _last_logp(model, params, tokens, positions, mask, mask_id):
  """The reference's forward, jitted (one program per shape, not one per eager operation)."""
  R, T = tokens.shape
  out = model.apply({'params': params}, tokens, positions,
                    attn_mask=jnp.broadcast_to(mask, (R, T, T)))
  return lib.subs_log_probs(out.logits_BxTxV[:, -1], mask_id)


def peaked(params, mask_id):
  """Larger weights and a small <mask> embedding: peaked conditionals that vary with the
  position and the revealed tokens (at init every query would predict the same token)."""
  params = jax.tree.map(lambda x: x * 4 if x.ndim >= 2 else x, params)
  params['embed']['embedding'] = params['embed']['embedding'].at[mask_id].mul(0.1)
  return params


@pytest.fixture(scope='module')
def setup():
  model = Transformer(small_config(vocab_size=V, num_layers=2))
  params = peaked(init_params(model, jax.random.key(0)), MASK)
  prompt = np.asarray(jax.random.randint(jax.random.key(1), (B, P), 0, 60), np.int32)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(3), i))(jnp.arange(B))
  return model, params, prompt, keys


def test_as_arm_loss_is_the_exact_nll_of_its_order(setup):
  model, params, prompt, _ = setup
  T = 7
  tokens = np.asarray(jax.random.randint(jax.random.key(5), (2, T), 0, 60), np.int32)
  weights = np.zeros((2, T - 1), np.float32)
  weights[0, 2:] = 1  # targets tokens[0, 3:]
  weights[1, 1:] = 1  # targets tokens[1, 2:]
  batch = {'tokens': jnp.asarray(tokens), 'weights': jnp.asarray(weights)}
  maskable = np.asarray(lib.maskable(batch))
  ranks = np.asarray(as_arm.random_ranks(jax.random.key(7), jnp.asarray(maskable)))
  s = lib.DiffusionSettings(mask_id=MASK)
  loss, metrics = as_arm.as_arm_loss(model, s, {'model': params}, batch, None,
                                     rank_BxT=jnp.asarray(ranks))
  nll, count = 0.0, 0
  for b in range(2):
    targets = np.flatnonzero(maskable[b])
    assert sorted(ranks[b, targets]) == list(range(1, len(targets) + 1))
    assert np.all(ranks[b, ~maskable[b]] == 0)
    fixed = np.flatnonzero(~maskable[b])  # the prompt: leading positions here
    order = targets[np.argsort(ranks[b, targets])]
    for r, pos in enumerate(order):
      prev = order[:r]
      logp = reference_logp(model, params, tokens[b:b + 1, fixed],
                            (tokens[b:b + 1, prev], prev[None]), [pos], MASK)
      nll -= float(logp[0, tokens[b, pos]])
      count += 1
  np.testing.assert_allclose(float(metrics['nll_sum']), nll, rtol=1e-4)
  np.testing.assert_allclose(float(loss), nll / count, rtol=1e-4)


def sequential_greedy(setup, ordering):
  """The reference: one reveal per reference forward, argmax, then cut after the first <eos>."""
  model, params, prompt, keys = setup
  dec = assd_lib.ASSDDecoder(ordering=ordering)
  order = np.asarray(dec.order(keys, N))
  out = np.full((B, N), PAD, np.int32)
  for b in range(B):
    pl = PLEN[b]
    canvas = np.zeros(N, np.int32)
    for r in range(N):
      prev = order[b, :r]
      logp = reference_logp(model, params, prompt[b:b + 1, :pl],
                            (canvas[prev][None], (pl + prev)[None]), [pl + order[b, r]], MASK)
      canvas[order[b, r]] = int(jnp.argmax(logp[0]))
    end = int(np.argmax(canvas == EOS)) + 1 if (canvas == EOS).any() else N
    out[b, :end] = canvas[:end]
  return out


def run_assd(setup, sampling=decoding.SamplingConfig(), **settings):
  model, params, prompt, keys = setup
  dec = registry.build('assd', dict(mask_id=MASK, **settings), sampling)
  dec = dec.for_model({'target': ModelKind(attention='bidirectional', mask_id=MASK,
                                            any_order=True)})
  fn = jax.jit(lambda p, t, l, k: dec.generate(base.Models(model), {'target': p}, t, l, k,
                                               max_new_tokens=N, cache_size=64, eos_id=EOS,
                                               pad_id=PAD))
  return jax.device_get(fn(params, jnp.asarray(prompt), jnp.asarray(PLEN), keys))


@pytest.mark.parametrize('ordering', ['left_to_right', 'random'])
def test_assd_greedy_equals_sequential_decoding(setup, ordering):
  ref = sequential_greedy(setup, ordering)
  assert (ref == EOS).any() and (ref == PAD).any()  # the <eos> cut is exercised
  assert len(np.unique(ref)) > 6  # not one repeated token
  for k in (1, 3):
    got = run_assd(setup, draft_len=k, ordering=ordering)
    np.testing.assert_array_equal(got.tokens_BxN, ref, err_msg=f'draft_len={k}')
    # At most one forward per revealed position, plus the first draft forward (a random
    # order also reveals positions after the first <eos>, cut from the output).
    revealed = got.extra['revealed']
    assert np.all(revealed >= got.num_generated_B)
    assert np.all(got.target_forwards_B <= revealed + 1), (k, got.target_forwards_B, revealed)
    if k == 1:
      np.testing.assert_array_equal(got.target_forwards_B, revealed + 1)


def test_assd_sampled_follows_the_joint():
  """3 canvas positions, 7 live tokens (vocab 8, <mask> = 7): the exact joint of the left-to-
  right order by enumeration, against 30000 ASSD draws (draft_len 3) at T = 1."""
  v, mask, n_pos, draws = 8, 7, 3, 30000
  model = Transformer(small_config(vocab_size=v, num_layers=2))
  params = peaked(init_params(model, jax.random.key(11)), mask)
  prompt = np.array([[1, 4, 2]], np.int32)
  live = np.arange(mask)
  joint = np.ones(())
  marginals = []
  for r in range(n_pos):  # p(x_r | x_<r) for every prefix, one batch per level
    prefixes = np.array(list(itertools.product(live, repeat=r)), np.int32)
    prefixes = prefixes.reshape(mask ** r, r)
    R = len(prefixes)
    logp = reference_logp(model, params, np.repeat(prompt, R, 0),
                          (prefixes, np.broadcast_to(3 + np.arange(r), (R, r))),
                          np.full(R, 3 + r), mask)
    cond = np.exp(np.asarray(logp)[:, :mask]).reshape([mask] * r + [mask])
    joint = joint[..., None] * cond  # p(x_<=r) = p(x_<r) p(x_r | x_<r)
    marginals.append(np.exp(np.asarray(reference_logp(
        model, params, prompt, None, [3 + r], mask))[0, :mask]))
  assert abs(joint.sum() - 1) < 1e-4
  product = np.einsum('i,j,k->ijk', *marginals)
  # Power: drafts accepted without verification would sample `product`, far from the joint.
  assert 0.5 * np.abs(joint - product).sum() > 0.1

  dec = assd_lib.ASSDDecoder(mask_id=mask, shift=0, block_causal=0, draft_len=3,
                             sampling=decoding.SamplingConfig(temperature=1.0))
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(2026), i))(jnp.arange(draws))
  fn = jax.jit(lambda k: dec.generate(base.Models(model), {'target': params},
                                      jnp.broadcast_to(jnp.asarray(prompt), (draws, 3)),
                                      jnp.full((draws,), 3, jnp.int32), k,
                                      max_new_tokens=n_pos, cache_size=8, eos_id=-1,
                                      pad_id=0))
  out = jax.device_get(fn(keys))
  toks = out.tokens_BxN
  assert toks.max() < mask
  counts = np.bincount(np.ravel_multi_index(toks.T, [mask] * n_pos), minlength=mask ** n_pos)
  expected = joint.ravel() * draws
  # Pool outcomes expected fewer than 5 times into one cell (chi-square validity).
  small = expected < 5
  obs, exp = counts[~small], expected[~small]
  if small.any():
    obs, exp = np.append(obs, counts[small].sum()), np.append(exp, expected[small].sum())
  chi2 = ((obs - exp) ** 2 / exp).sum()
  p_value = scipy_stats.chi2.sf(chi2, len(obs) - 1)
  assert p_value > 1e-3, (chi2, len(obs), p_value)
  tv = 0.5 * np.abs(counts / draws - joint.ravel()).sum()
  assert tv < 0.05, tv
  # Fewer forwards than sequential decoding (n_pos + 1) on average.
  assert out.target_forwards_B.mean() < n_pos


def test_bad_input_is_refused():
  dec = assd_lib.ASSDDecoder()
  with pytest.raises(ValueError, match="needs an any-subset AR model"):
    dec.for_model({'target': ModelKind(attention='bidirectional', mask_id=3)})
  with pytest.raises(ValueError, match="decode it with 'assd'"):
    registry.build('llada', {}, decoding.SamplingConfig()).for_model(
        {'target': ModelKind(attention='bidirectional', mask_id=3, any_order=True)})
  for bad, match in [(dict(draft_len=0), 'draft_len'), (dict(ordering='zigzag'), 'ordering'),
                     (dict(shift=1), 'shift')]:
    d = assd_lib.ASSDDecoder(mask_id=MASK, shift=0, block_causal=0)
    with pytest.raises(ValueError, match=match):
      dataclasses.replace(d, **bad).validate(V)
  c = ml_collections.ConfigDict({'tokenizer': {'kind': 'byte'}, 'diffusion': {'shift': True}})
  with pytest.raises(ValueError, match='shift=False'):
    as_arm.as_arm_objective(None, c)
