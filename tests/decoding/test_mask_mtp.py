"""Masked-input MTP ("Your LLM Knows the Future"): the gated LoRA leaves ordinary tokens
bit-identical, the decoder equals AR token for token on a ragged batch (greedy), its cache
equals AR's after every step, and clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import testlib
from testlib import small_config
from decoding import Models, registry, run_decoder
from models import Cache, ModelKind, Transformer, init_params, mask_mtp

V = 48
PAD = 0
PROMPTS = [[1, 5, 9, 3, 1, 5, 9], [2, 7], [4, 4, 8, 1, 6, 2, 9, 4, 4], [3]]
N_NEW = 24
CACHE = 128


def _noisy_tree(cfg, K, rank, seed, tp, scale=0.3):
  """A mask_mtp tree with a nonzero LoRA B and sampler (as after training)."""
  tree = mask_mtp.init_params(cfg, K, rank, jax.random.key(seed), tp['embed']['embedding'])
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape)
                                      for x, k in zip(leaves, keys)])


@pytest.fixture(scope='module')
def setup():
  cfg = small_config(vocab_size=V, num_layers=3)
  target = Transformer(cfg)
  tp = init_params(Transformer(small_config(vocab_size=V, num_layers=3, init_std=0.3)),
                   jax.random.key(7))
  tree = _noisy_tree(cfg, 4, 4, 1, tp)
  models = Models(target)
  params = {'target': tp, 'mask_mtp': tree}
  eos, ref = testlib.ragged_ar_reference(models, params, PROMPTS, max_new_tokens=N_NEW,
                                         cache_size=CACHE, pad_id=PAD)
  return models, params, eos, ref


def test_gate_leaves_ordinary_tokens_bit_identical(setup):
  """[tokens; masks] with the trained (nonzero) gated LoRA: the ordinary positions' logits
  are bit-identical to the model without it (op by op), and inside one compiled forward to
  the same forward with the gate off and with another LoRA (also through the cache); the
  masks' logits differ; an ungated LoRA (m = 1 everywhere) would change the ordinary ones."""
  models, params, _, _ = setup
  model, tp, tree = models.target, params['target'], params['mask_mtp']
  B, T, K = 2, 11, 4
  n = T - K
  tokens = jax.random.randint(jax.random.key(3), (B, T), 0, V)
  gate = jnp.broadcast_to(jnp.arange(T)[None] >= n, (B, T))
  index = jnp.broadcast_to(jnp.maximum(jnp.arange(T) - n, 0)[None], (B, T))
  other = jax.tree.map(lambda x: -2.0 * x, tree)
  lora = mask_mtp.gated_lora(tree, gate, index)
  fwd = lambda lo: model.apply({'params': tp}, tokens, lora=lo).logits_BxTxV
  with jax.disable_jit():  # op by op: without vs with the LoRA
    base, gated = np.asarray(fwd(None)), np.asarray(fwd(lora))
  np.testing.assert_array_equal(gated[:, :n], base[:, :n])
  assert np.abs(gated[:, n:] - base[:, n:]).max() > 1e-2
  jitted = jax.jit(fwd)
  jfwd = lambda lo: np.asarray(jitted(lo))
  one = jfwd(lora)
  for lo in (mask_mtp.gated_lora(tree, jnp.zeros_like(gate), index),
             mask_mtp.gated_lora(other, gate, index)):
    np.testing.assert_array_equal(jfwd(lo)[:, :n], one[:, :n])
  np.testing.assert_allclose(one[:, :n], base[:, :n], atol=1e-4)  # another program: last bits
  everywhere = jfwd(mask_mtp.gated_lora(tree, jnp.ones_like(gate), index))
  assert np.abs(everywhere[:, :n] - base[:, :n]).max() > 1e-2

  @jax.jit
  def cached(lo):  # a prefix of 3 in the cache, then the rest in one call
    cache = Cache.init(model.cfg, B, 32)
    pos = jnp.broadcast_to(jnp.arange(T)[None], (B, T))
    out = model.apply({'params': tp}, tokens[:, :3], pos[:, :3], cache=cache)
    sub = mask_mtp.GatedLoRA(lo.layers, lo.gate_BxT[:, 3:], lo.mask_embed_BxTxD[:, 3:])
    return model.apply({'params': tp}, tokens[:, 3:], pos[:, 3:], cache=out.cache,
                       lora=sub).logits_BxTxV
  np.testing.assert_array_equal(
      np.asarray(cached(lora))[:, :n - 3],
      np.asarray(cached(mask_mtp.gated_lora(other, jnp.zeros_like(gate), index)))[:, :n - 3])


@pytest.mark.parametrize('name,settings', [
    ('mask_mtp', dict(gamma=4)),
    ('speculative', dict(drafter='mask_mtp', gamma=2)),  # the speculative:drafter= route
    ('mask_mtp', dict(gamma=3, quadratic=True)),
], ids=['mask_mtp-4', 'speculative-drafter-2', 'quadratic-3'])
def test_greedy_equals_ar_on_a_ragged_batch(setup, name, settings):
  models, params, eos, ref = setup
  dec = registry.build(name, settings)
  stats = testlib.decode_like_ar(dec, models, params, PROMPTS, eos, ref, max_new_tokens=N_NEW,
                                 cache_size=CACHE, pad_id=PAD)
  # The random masks get drafts accepted (else the test would not exercise them).
  assert stats.extra['accepted_by_depth'][0] > 0


def test_errors(setup):
  models, params, eos, _ = setup

  def run(dec, p=params):
    return run_decoder(dec, models, p, PROMPTS[:1], max_new_tokens=4, cache_size=CACHE,
                       eos_id=eos, pad_id=PAD)
  with pytest.raises(ValueError, match=r'mask_mtp heads in the target run.*configs/mask_mtp'):
    registry.build('mask_mtp').for_model({'target': ModelKind(heads=('medusa',))})
  assert registry.build('mask_mtp').for_model({'target': ModelKind(heads=('mask_mtp',))})
  with pytest.raises(ValueError, match=r"'mask_mtp' drafter needs a mask_mtp tree"):
    run(registry.build('mask_mtp'), {'target': params['target']})
  with pytest.raises(ValueError, match='4 trained masks; lower gamma'):
    run(registry.build('mask_mtp', {'gamma': 5}))
  with pytest.raises(ValueError, match='adaptive'):
    registry.build('mask_mtp', {'adaptive': True})
  with pytest.raises(ValueError, match='must hold mask_embedding'):
    run(registry.build('mask_mtp'), dict(params, mask_mtp={'lora': {}}))
  with pytest.raises(ValueError, match='attention-only'):
    mask_mtp.init_params(small_config(vocab_size=V, layer_types=('attention', 'deltaproduct')),
                         2, 2, jax.random.key(0))


def test_sampling_follows_the_target_distribution(trained_workdir):
  """Temperature 0.7, top-k 4, 10,000 rows of one prompt, 3 new tokens: the first comes from
  the prefill, the second from a step without drafts (no masks yet), the third is verified
  against the masks' drafts (accepted or resampled). The triples must follow the exact
  p(a) p(b | a) p(c | a, b) over the 4 x 4 x 4 support: chi-square p-value > 0.01 (cells
  with expected count < 5 pooled) and total variation < 0.06 (an exact sampler's expected TV
  here is about 0.03). Rows outside the support are counted in TV and must be <= 2: with
  top-k 8, 20,000 rows and seed 11, row 11453 drew a third token outside the top 8 (99, 32,
  151) and the AR decoder drew the same triple for that row (the shared sampler's, not this
  drafter's)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  from decoding import SamplingConfig, sampling  # pylint: disable=g-import-not-at-top
  from workdir import loading  # pylint: disable=g-import-not-at-top
  cfgs = SamplingConfig(temperature=0.7, top_k=4)
  target = loading.load_model(trained_workdir)
  model, tp = target.model, target.params
  tree = mask_mtp.init_params(model.cfg, 2, 2, jax.random.key(0), tp['embed']['embedding'])
  prompt = target.tokenizer.encode('def ', add_bos=True)
  n = 10_000
  rows, st = run_decoder(registry.build('mask_mtp', {'gamma': 2}, cfgs), Models(model),
                         {'target': tp, 'mask_mtp': tree}, [prompt] * n, max_new_tokens=3,
                         cache_size=32, eos_id=-1, pad_id=0, seed=11, prompt_bucket=8)
  assert st.extra['accepted_by_depth'][0] > 1000  # drafts were accepted (and rejected)
  assert st.extra['accepted_by_depth'][0] < n - 1000
  fwd = jax.jit(lambda s: model.apply({'params': tp}, s).logits_BxTxV[:, -1])
  probs = lambda seqs: np.asarray(jnp.exp(sampling.log_probs(fwd(jnp.asarray(seqs)), cfgs)),
                                  np.float64)
  p1 = probs([prompt])[0]
  A = np.flatnonzero(p1 > 0)
  p2 = probs([prompt + [int(a)] for a in A])  # [|A|, V]
  pairs = [(a, b) for i, a in enumerate(A) for b in np.flatnonzero(p2[i] > 0)]
  p3 = probs([prompt + [int(a), int(b)] for a, b in pairs])
  exact, cells = [], {}
  for k, (a, b) in enumerate(pairs):
    pab = p1[a] * p2[list(A).index(a), b]
    for c in np.flatnonzero(p3[k] > 0):
      cells[(a, b, c)] = len(exact)
      exact.append(pab * p3[k, c])
  exact = np.asarray(exact) / np.sum(exact)
  counts, outside = np.zeros(len(exact)), 0
  for r in rows:
    key = tuple(r.tokens[:3])
    if key in cells:
      counts[cells[key]] += 1
    else:
      outside += 1
  assert outside <= 2, outside
  tv = 0.5 * (np.abs(counts / n - exact).sum() + outside / n)
  big = exact * n >= 5
  obs = np.append(counts[big], counts[~big].sum())
  exp = np.append(exact[big], exact[~big].sum()) * (n - outside)
  pvalue = stats.chisquare(obs[exp > 0], exp[exp > 0]).pvalue
  assert tv < 0.06, tv
  assert pvalue > 0.01, pvalue
