"""The Chimera drafter: greedy == AR token for token on a ragged batch (chain, static tree),
every draft equals the draft model's no-cache forward over the committed text (the cache and
the pending pairs stay consistent), clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import testlib
from testlib import small_config
from decoding import Models, registry, run_decoder
from decoding.speculative import drafter as drafter_lib
from decoding.speculative import loop
from models import Transformer, chimera, heads, init_params
import spec_cases

V = 48
PAD = 0
PROMPTS = [[1, 5, 9, 3, 1, 5, 9], [2, 7], [4, 4, 8, 1, 6, 2, 9, 4, 4], [3]]
N_NEW = 24
CACHE = 128


@pytest.fixture(scope='module')
def setup():
  """A 3-layer target with spread logits; a Chimera draft whose heads start from the target's
  head (plus noise, so some drafts are right and some wrong)."""
  cfg = small_config(vocab_size=V, num_layers=3)
  target = Transformer(cfg)
  tp = init_params(Transformer(small_config(vocab_size=V, num_layers=3, init_std=0.3)),
                   jax.random.key(7))
  cp = chimera.init_params(cfg, 4, jax.random.key(1))
  cp = chimera.init_heads_from(cp, heads.output_embedding(tp, cfg))
  cp = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(2), x.shape), cp)
  models = Models(target)
  params = {'target': tp, 'chimera': cp}
  eos, ref = testlib.ragged_ar_reference(models, params, PROMPTS, max_new_tokens=N_NEW,
                                         cache_size=CACHE, pad_id=PAD)
  return models, params, eos, ref


METHODS = {
    'chain': ('chimera', dict(tree='chain', gamma=4)),
    'static-tree': ('chimera', dict(branching='3,2,1')),
}


@pytest.mark.parametrize('method', list(METHODS))
def test_chimera_greedy_equals_ar_on_a_ragged_batch(setup, method):
  models, params, eos, ref = setup
  name, settings = METHODS[method]
  dec = registry.build(name, settings)
  assert dec.lossless
  rows, stats = run_decoder(dec, models, params, PROMPTS, max_new_tokens=N_NEW,
                            cache_size=CACHE, eos_id=eos, pad_id=PAD)
  assert [r.tokens for r in rows] == ref
  steps = stats.extra['spec_steps']
  assert stats.target_forwards == steps + len(PROMPTS)
  acc = stats.extra['accepted_by_depth']
  assert 0 < acc[0] < steps  # some drafts accepted, some not: the check is not vacuous
  # One draft call per step plus one over each prompt.
  assert stats.other_forwards == steps + len(PROMPTS)


def test_chimera_drafts_match_a_reference_without_cache(setup):
  """Each chain draft of depth d is head d's argmax of the draft run from scratch (no cache)
  over the committed text with the target's hidden states. Greedy == AR cannot see a stale
  draft cache or a wrong trigram (the verifier corrects any draft); this can."""
  models, params, eos, _ = setup
  dec = registry.build('chimera', dict(tree='chain', gamma=4))
  drafter = dec.get_drafter().resolve(models)
  cfg, tp, cp = models.target.cfg, params['target'], params['chimera']
  B, P, L = len(PROMPTS), max(map(len, PROMPTS)), 64
  prompt = np.full((B, P), PAD, np.int32)
  for i, p in enumerate(PROMPTS):
    prompt[i, :len(p)] = p
  lens = jnp.asarray([len(p) for p in PROMPTS], jnp.int32)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(B))
  env = lambda p: drafter_lib.Env(models=models, params=p, sampling=dec.sampling,
                                  mode='deterministic', row_keys_B=keys,
                                  prompt_BxP=jnp.asarray(prompt), prompt_len_B=lens,
                                  cache_size=CACHE, max_new_tokens=N_NEW)
  init = jax.jit(lambda p: loop.init_state(drafter, env(p), eos_id=eos, pad_id=PAD))
  step = jax.jit(lambda p, s: loop.step(drafter, env(p), s, eos_id=eos, pad_id=PAD))

  @jax.jit
  def propose(p, s):
    base_B = lens + s.progress.num_generated_B - 1
    return drafter.propose(env(p), s.drafter, s.cache, s.last_B, base_B,
                           s.progress.active_B)[0]

  @jax.jit
  def reference(tokens_L, n):  # head logits at position n - 1 from the text x_0 .. x_{n-1}
    pos = jnp.where(jnp.arange(L) < n, jnp.arange(L), -1)[None]
    h = models.target.apply({'params': tp}, tokens_L[None], pos).last_hidden_BxTxD
    tri = chimera.trigram_tokens(tokens_L[None], pos, jnp.full((1, 2), -1, jnp.int32))
    logits, _ = chimera.ChimeraDraft(cfg, 4).apply(
        {'params': cp}, h[:, :-1], tri[:, 1:], pos[:, 1:], heads.input_embedding(tp))
    return logits[0, n - 2]  # pair of position n - 1 (index n - 2) -> [K, V]

  checked = 0
  for tree, b, seq in spec_cases.proposals_along_a_run(init, step, propose, params,
                                                       prompts=PROMPTS):
    toks = np.zeros(L, np.int32)
    toks[:len(seq)] = seq
    want = np.argmax(np.asarray(reference(jnp.asarray(toks), len(seq))), -1)
    np.testing.assert_array_equal(np.asarray(tree.tokens_BxT[b, 1:]), want)
    checked += 1
  assert checked >= 18


def test_chimera_errors(setup):
  from models.kind import ModelKind  # pylint: disable=g-import-not-at-top
  models, params, eos, _ = setup
  run = lambda dec, p=params: run_decoder(dec, models, p, PROMPTS, max_new_tokens=4,
                                          cache_size=CACHE, eos_id=eos, pad_id=PAD)
  with pytest.raises(ValueError, match=r'chimera heads in the target run.*spec_heads.py:chimera'):
    registry.build('chimera').for_model({'target': ModelKind(heads=('medusa',))})
  with pytest.raises(ValueError, match='chimera drafter needs a chimera draft'):
    run(registry.build('chimera'), {'target': params['target']})
  with pytest.raises(ValueError, match=r'5 deep but the run has 4 heads'):
    run(registry.build('chimera', dict(tree='chain', gamma=5)))
  with pytest.raises(ValueError, match='no adaptive draft length'):
    registry.build('chimera', dict(tree='chain', adaptive=True))
  with pytest.raises(ValueError, match='at least one head'):
    chimera.init_params(models.target.cfg, 0, jax.random.key(0))
