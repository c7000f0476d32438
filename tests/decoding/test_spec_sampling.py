"""End to end on a trained model: speculative sampling reproduces the target's distribution.

The target is the `trained_workdir` run (test preset, byte vocabulary); the draft is its own
first layer (a genuinely different q). With temperature 0.7 and top-k 8 applied to p and q
alike, 20,000 rows of the same prompt each generate two tokens; the empirical two-token
prefix distribution must match the exact p(a) p(b | a) computed from the model:
total variation < 0.04 (an exact sampler's expected TV here is at most ~0.023) and a
chi-square goodness-of-fit p-value > 0.01 (cells with expected count < 5 pooled).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from decoding import Models, SamplingConfig, registry, run_decoder, sampling
from models import Transformer
import testlib

ROWS = 20_000
TV_BOUND = 0.04
CFG = SamplingConfig(temperature=0.7, top_k=8)
# 20,000 rows: running these programs outweighs compiling them (testlib.RUN_OPTIMISED).
FAST = testlib.RUN_OPTIMISED


@pytest.fixture(scope='module')
def lm(trained_workdir):
  from workdir import loading  # pylint: disable=g-import-not-at-top
  target = loading.load_model(trained_workdir)
  import dataclasses  # pylint: disable=g-import-not-at-top
  draft = Transformer(dataclasses.replace(target.model.cfg, num_layers=1,
                                          layer_types=('attention',)))
  dp = {k: v for k, v in target.params.items() if not k.startswith('layer_') or k == 'layer_0'}
  prompt = target.tokenizer.encode('def ', add_bos=True)
  return target, draft, dp, prompt


@pytest.fixture(scope='module')
def exact(lm):
  """[V * V]: the target's exact two-token distribution after the prompt, normalised."""
  target, _, _, prompt = lm
  p = _exact_two_token(target.model, target.params, prompt).ravel()
  return p / p.sum()


def _exact_two_token(model, params, prompt):
  V = model.cfg.vocab_size
  seq = jnp.asarray(prompt)[None]
  p1 = jnp.exp(sampling.log_probs(model.apply({'params': params}, seq).logits_BxTxV[0, -1],
                                  CFG))
  seqs = jnp.concatenate([jnp.repeat(seq, V, 0), jnp.arange(V)[:, None]], axis=1)
  p2 = jnp.exp(sampling.log_probs(jax.jit(lambda s: model.apply({'params': params}, s))(
      seqs).logits_BxTxV[:, -1], CFG))
  return np.asarray(p1, np.float64)[:, None] * np.asarray(p2, np.float64)


@pytest.mark.parametrize('settings', [
    dict(gamma=3),                                              # chain, Leviathan/Chen
    dict(tree='static', branching='3,2', verifier='wor'),        # Sequoia / RSD-C tree
    dict(tree='dynamic', top_k=3, gamma=2, verifier='wor'),      # RSD-S stochastic beams
    dict(tree='static', branching='3,2', verifier='traversal'),  # Traversal Verification
    dict(tree='static', branching='3,2', verifier='kseq'),       # SpecTr K-SEQ
    dict(tree='static', tree_nodes=5, gamma=3, delay=1,         # delayed expansion (DDTE)
         verifier='traversal'),
    dict(tree='static', tree_nodes=5, gamma=3, delay=1, verifier='iid'),
    dict(drafter='prompt_lookup', gamma=3, adaptive=True,       # adaptive: an AR step
         costs='1,9,9,9'),
    dict(decoder='jacobi_forcing', block=2, blocks=2, recycle=2),  # Jacobi blocks + recycling
    dict(decoder='layerskip', exit_layer=1, gamma=2, adaptive=True,  # early exit's AR step
         costs='1,9,9'),
], ids=['chain-iid', 'tree-wor', 'dynamic-wor', 'tree-traversal', 'tree-kseq',
        'delayed-traversal',
        'delayed-iid', 'adaptive-ar-step', 'jacobi_forcing', 'layerskip-adaptive-ar-step'])
def test_two_token_prefix_distribution_matches_target(lm, exact, settings):
  target, draft, dp, prompt = lm
  settings = dict(settings)
  name = settings.pop('decoder', 'speculative')
  extra = {} if 'drafter' in settings or name != 'speculative' else {'draft_workdir': 'x'}
  dec = registry.build(name, dict(settings, **extra), CFG)
  rows, _ = run_decoder(dec, Models(target.model, extras=(('draft', draft),)),
                        {'target': target.params, 'draft': dp}, [prompt] * ROWS,
                        max_new_tokens=2, cache_size=32, eos_id=-1, pad_id=0, seed=11,
                        prompt_bucket=8, compiler_options=FAST)
  _assert_matches_target(rows, exact)


def _assert_matches_target(rows, exact):
  V = math.isqrt(exact.size)
  pairs = np.array([r.tokens[:2] for r in rows])
  counts = np.bincount(pairs[:, 0] * V + pairs[:, 1], minlength=V * V).astype(np.float64)
  tv = 0.5 * np.abs(counts / counts.sum() - exact).sum()
  big = exact * ROWS >= 5
  obs = np.append(counts[big], counts[~big].sum())
  exp = np.append(exact[big], exact[~big].sum()) * ROWS
  pvalue = stats.chisquare(obs[exp > 0], exp[exp > 0]).pvalue
  assert tv < TV_BOUND, tv
  assert pvalue > 0.01, pvalue


@pytest.mark.parametrize('name,settings', [
    ('speculative', dict(draft_workdir='x', gamma=3)),                     # chain, iid
    ('speculative', dict(draft_workdir='x', tree='static', branching='3,2',
                         verifier='wor')),                                  # Sequoia tree
    ('layerskip', dict(exit_layer=1, gamma=2)),                           # early exit
], ids=['chain-iid', 'tree-wor', 'layerskip'])
def test_draft_vocab_two_token_prefix_distribution_matches_target(lm, exact, name, settings):
  """A decode-time draft vocabulary (every other id: about half the likely tokens after the
  prompt lie outside it, where q is zero and p is not): the output still follows p."""
  from models import draft_vocab  # pylint: disable=g-import-not-at-top
  target, draft, dp, prompt = lm
  hot = jnp.arange(0, target.model.cfg.vocab_size, 2, dtype=jnp.int32)
  dec = registry.build(name, dict(settings, draft_vocab=int(hot.shape[0])), CFG)
  params = {'target': target.params, 'draft': dp,
            draft_vocab.RUN_KEY: {draft_vocab.size_key(hot.shape[0]): hot}}
  rows, _ = run_decoder(dec, Models(target.model, extras=(('draft', draft),)), params,
                        [prompt] * ROWS, max_new_tokens=2, cache_size=32, eos_id=-1, pad_id=0,
                        seed=11, prompt_bucket=8, compiler_options=FAST)
  _assert_matches_target(rows, exact)


@pytest.mark.parametrize('name,settings', [
    ('eagle3', dict(tree='chain', gamma=3)),
    ('eagle1', dict(gamma=2, top_k=3, tree_nodes=5)),           # EAGLE-2 dynamic tree
], ids=['eagle3-chain', 'eagle1-dynamic'])
def test_eagle_two_token_prefix_distribution_matches_target(lm, exact, name, settings):
  """EAGLE drafts deterministically (argmax / top-k children of a random draft layer); the
  deterministic rule verifies them under sampling."""
  from models import eagle  # pylint: disable=g-import-not-at-top
  target, _, _, prompt = lm
  cfg = target.model.cfg
  ids = eagle.feature_layers(cfg.num_layers)
  ep = jax.tree.map(lambda x: 3 * x, eagle.init_params(cfg, name, ids, jax.random.key(4)))
  dec = registry.build(name, settings, CFG)
  rows, _ = run_decoder(dec, Models(target.model), {'target': target.params, name: ep},
                        [prompt] * ROWS, max_new_tokens=2, cache_size=32, eos_id=-1, pad_id=0,
                        seed=11, prompt_bucket=8, compiler_options=FAST)
  _assert_matches_target(rows, exact)


def test_chimera_two_token_prefix_distribution_matches_target(lm, exact):
  """Chimera drafts deterministically (its heads' top tokens); the deterministic rule verifies
  them under sampling."""
  from models import chimera, heads  # pylint: disable=g-import-not-at-top
  target, _, _, prompt = lm
  cfg = target.model.cfg
  cp = chimera.init_heads_from(chimera.init_params(cfg, 2, jax.random.key(4)),
                               heads.output_embedding(target.params, cfg))
  dec = registry.build('chimera', dict(tree='chain', gamma=2), CFG)
  rows, _ = run_decoder(dec, Models(target.model), {'target': target.params, 'chimera': cp},
                        [prompt] * ROWS, max_new_tokens=2, cache_size=32, eos_id=-1, pad_id=0,
                        seed=11, prompt_bucket=8, compiler_options=FAST)
  _assert_matches_target(rows, exact)


def test_s2d_two_token_prefix_distribution_matches_target(lm, exact):
  """S2D's sub-model 1 of a nested draft (here the target's own first layer and head) drafts
  a chain verified by speculative sampling."""
  target, _, _, prompt = lm
  dec = registry.build('s2d', dict(draft_workdir='x', exit_layer=1, gamma=2), CFG)
  rows, _ = run_decoder(dec, Models(target.model, extras=(('draft', target.model),)),
                        {'target': target.params, 'draft': target.params}, [prompt] * ROWS,
                        max_new_tokens=2, cache_size=32, eos_id=-1, pad_id=0, seed=11,
                        prompt_bucket=8, compiler_options=FAST)
  _assert_matches_target(rows, exact)


def test_ppd_two_token_prefix_distribution_matches_target(lm, exact):
  """PPD drafts deterministically (top-r tokens of prompt tokens; random embeddings of a
  large scale here); the deterministic rule verifies them under sampling. The first step's
  drafts come from the prompt tokens attached to the prompt, so token 2 is verified."""
  from models import ppd as ppd_model  # pylint: disable=g-import-not-at-top
  target, _, _, prompt = lm
  prompts = ppd_model.init_params(target.model.cfg.d_model, 1, jax.random.key(4), 0.05)
  dec = registry.build('ppd', dict(gamma=1, branching='4'), CFG)
  rows, stats = run_decoder(dec, Models(target.model), {'target': target.params, 'ppd': prompts},
                            [prompt] * ROWS, max_new_tokens=2, cache_size=64, eos_id=-1,
                            pad_id=0, seed=11, prompt_bucket=8, compiler_options=FAST)
  assert stats.extra['accepted_by_depth'][0] > 0  # some drafted second tokens were accepted
  _assert_matches_target(rows, exact)
