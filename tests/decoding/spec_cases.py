"""Shared cases of the speculative decoder tests (test_spec_decoders.py, test_spec_head_drafts.py):
a small target, a draft, heads and EAGLE layers with random weights, the ragged prompts and
AR's tokens on them, and the decoders under test by name."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import testlib
from testlib import small_config
from decoding import Models
from decoding.speculative import drafter as drafter_lib
from decoding.speculative import loop
from models import Transformer, draft_vocab, eagle, heads, init_params

V = 48
HOT_IDS = sorted(np.random.default_rng(0).choice(V, 20, replace=False).tolist())
PAD = 0
PROMPTS = [[1, 5, 9, 3, 1, 5, 9], [2, 7], [4, 4, 8, 1, 6, 2, 9, 4, 4], [3]]
N_NEW = 24
CACHE = 128


def build_setup():
  """(models, params, eos, AR's tokens) of a 3-layer target with spread logits, a 1-layer draft
  cut from it, and random heads (also over a reduced draft vocabulary: the '*_hot' params)."""
  cfg = small_config(vocab_size=V, num_layers=3)
  target = Transformer(cfg)
  tp = init_params(Transformer(small_config(vocab_size=V, num_layers=3, init_std=0.3)),
                   jax.random.key(7))
  draft = Transformer(small_config(vocab_size=V, num_layers=1))
  dp = {k: v for k, v in tp.items() if k not in ('layer_1', 'layer_2')}
  h, emb = jnp.zeros((1, 2, cfg.d_model)), tp['embed']['embedding']
  noise = lambda t, k: jax.tree.map(
      lambda x: x + 0.1 * jax.random.normal(jax.random.key(k), x.shape), t)
  med = noise(nn.unbox(heads.MedusaHeads(cfg, 3).init(jax.random.key(1), h, emb)['params']), 2)
  mtp = nn.unbox(heads.MTPModules(cfg, 3).init(jax.random.key(3), h,
                                               jnp.zeros((1, 3), jnp.int32), emb, emb)['params'])
  kang = nn.unbox(heads.KangarooAdapter(cfg).init(jax.random.key(4), h,
                                                  jnp.zeros((1, 2), jnp.int32), emb)['params'])
  # EAGLE layers with spread outputs (random weights, scaled up so drafts vary by context).
  scale = lambda t: jax.tree.map(lambda x: x * 4.0, t)
  # EAGLE-3 with its own head (a random correction to the target's), EAGLE-1 without.
  e3 = scale(eagle.init_params(cfg, 'eagle3', eagle.feature_layers(3), jax.random.key(5),
                               own_head=True))
  e3['head_delta'] = 0.3 * jax.random.normal(jax.random.key(8), e3['head_delta'].shape)
  e1 = scale(eagle.init_params(cfg, 'eagle1', (), jax.random.key(6)))
  # EAGLE-3 over a reduced draft vocabulary (20 of the 48 ids) with its own head correction.
  e3h = scale(eagle.init_params(cfg, 'eagle3', eagle.feature_layers(3), jax.random.key(9),
                                own_head=True, hot_ids=HOT_IDS))
  e3h['head_delta'] = 0.3 * jax.random.normal(jax.random.key(10), e3h['head_delta'].shape)
  e3h['hot_ids'] = jnp.asarray(HOT_IDS, jnp.int32)  # scale() made them floats
  models = Models(target, extras=(('draft', draft),))
  params = {'target': tp, 'draft': dp, 'medusa': med, 'mtp': mtp, 'kangaroo': kang,
            'eagle3': e3, 'eagle1': e1, 'eagle3_hot': e3h,
            'medusa_hot': dict(med, hot_ids=jnp.asarray(HOT_IDS, jnp.int32)),
            'mtp_hot': dict(mtp, hot_ids=jnp.asarray(HOT_IDS, jnp.int32)),
            # decode-time draft vocabularies (draft model, early exit: `draft_vocab=20`)
            draft_vocab.RUN_KEY: {draft_vocab.size_key(len(HOT_IDS)):
                                  jnp.asarray(HOT_IDS, jnp.int32)}}
  eos, ref = testlib.ragged_ar_reference(models, params, PROMPTS, max_new_tokens=N_NEW,
                                         cache_size=CACHE, pad_id=PAD)
  return models, params, eos, ref


METHODS = {
    'chain': ('speculative', dict(draft_workdir='x', gamma=3)),  # draft loop: unrolled
    'chain-fixed': ('speculative', dict(draft_workdir='x', gamma=3, draft_loop='fixed')),
    'chain-while': ('speculative', dict(draft_workdir='x', gamma=3, draft_loop='while')),
    # rows stop drafting at different depths; the fixed-count loop passes them through
    'chain-adaptive': ('speculative', dict(draft_workdir='x', gamma=4, stop_below=0.3,
                                           draft_loop='fixed')),
    'static-tree': ('speculative', dict(draft_workdir='x', tree='static', branching='3,2,1')),
    'delayed-tree': ('speculative', dict(draft_workdir='x', tree='static', tree_nodes=6,
                                         gamma=4, delay=2)),
    'dynamic-tree': ('spec_dynamic', dict(draft_workdir='x', gamma=3, top_k=3, tree_nodes=10)),
    # the draft model and the early exits over a decode-time draft vocabulary (20 of 48 ids)
    'chain-vocab': ('speculative', dict(draft_workdir='x', gamma=3, draft_vocab=20)),
    'static-tree-vocab': ('speculative', dict(draft_workdir='x', tree='static',
                                              branching='3,2,1', draft_vocab=20)),
    'dynamic-tree-vocab': ('spec_dynamic', dict(draft_workdir='x', gamma=3, top_k=3,
                                                tree_nodes=10, draft_vocab=20)),
    'layerskip-vocab': ('layerskip', dict(exit_layer=1, draft_vocab=20)),
    'kangaroo-vocab': ('kangaroo', dict(exit_layer=2, stop_below=0.05, draft_vocab=20)),
    'del-vocab': ('del', dict(draft_vocab=20)),
    'prompt_lookup': ('prompt_lookup', {}),
    'token_recycling': ('token_recycling', dict(tree_nodes=20, gamma=4)),
    'jacobi': ('jacobi', {}),
    'lookahead': ('lookahead', {}),
    'jacobi_forcing': ('jacobi_forcing', dict(block=3, blocks=2, recycle=2)),
    'jacobi_forcing-no-recycle': ('jacobi_forcing', dict(block=4, blocks=1, recycle=0)),
    'layerskip': ('layerskip', dict(exit_layer=1)),
    'kangaroo': ('kangaroo', dict(exit_layer=2, stop_below=0.05)),
    'del': ('del', {}),
    'medusa': ('medusa', dict(branching='3,2,1')),
    'medusa-hot': ('medusa', dict(branching='3,2,1')),  # heads over a reduced vocabulary
    'mtp-hot': ('mtp', dict(tree='static', branching='2,2')),
    'mtp': ('mtp', dict(gamma=3)),
    'eagle3-chain': ('eagle3', dict(tree='chain', gamma=4)),
    'eagle3-chain-fixed': ('eagle3', dict(tree='chain', gamma=4, draft_loop='fixed')),
    'eagle3-dynamic': ('eagle3', dict(gamma=3, top_k=3, tree_nodes=10)),
    'eagle3-chain-hot': ('eagle3', dict(tree='chain', gamma=4)),    # reduced vocabulary
    'eagle3-dynamic-hot': ('eagle3', dict(gamma=3, top_k=3, tree_nodes=10)),
    # trained over the whole vocabulary, drafting over a decode-time set (FR-Spec)
    'eagle3-chain-vocab': ('eagle3', dict(tree='chain', gamma=4, draft_vocab=20)),
    'eagle3-dynamic-vocab': ('eagle3', dict(gamma=3, top_k=3, tree_nodes=10, draft_vocab=20)),
    'eagle1-dynamic-vocab': ('eagle1', dict(gamma=4, top_k=2, tree_nodes=6, draft_vocab=20)),
    'medusa-vocab': ('medusa', dict(branching='3,2,1', draft_vocab=20)),
    'mtp-vocab': ('mtp', dict(tree='static', branching='2,2', draft_vocab=20)),
    'eagle1-chain': ('eagle1', dict(tree='chain', gamma=3)),
    'eagle1-dynamic': ('eagle1', dict(gamma=4, top_k=2, tree_nodes=6)),
    'speculative-drafter-eagle3': ('speculative', dict(drafter='eagle3', tree='chain')),
    # Adaptive draft length: given costs that make the length change during the run, and
    # costs measured when the decoder is compiled.
    'prompt_lookup-adaptive': ('prompt_lookup', dict(adaptive=True, costs='1,1.1,1.3,1.6,2,3')),
    'prompt_lookup-adaptive-measured': ('prompt_lookup', dict(gamma=3, adaptive=True)),
    'token_recycling-adaptive': ('token_recycling', dict(tree='chain', gamma=3, adaptive=True,
                                                         costs='1,1.2,1.3,1.5')),
    'chain-adaptive-length': ('speculative', dict(draft_workdir='x', gamma=4, adaptive=True,
                                                  costs='1,1.2,1.4,1.6')),
    'mtp-adaptive': ('mtp', dict(gamma=3, tree='chain', adaptive=True, costs='1,1.1,1.3,1.5')),
    'jacobi-adaptive': ('jacobi', dict(window=4, adaptive=True, costs='1,1.05,1.1,1.15,1.2')),
    # early exit: AR steps through its own forward; Kangaroo (adapter) never skips drafting
    'layerskip-adaptive': ('layerskip', dict(exit_layer=1, adaptive=True,
                                             costs='1,1.05,1.1,1.15,1.2')),
    'layerskip-vocab-adaptive': ('layerskip', dict(exit_layer=1, adaptive=True, draft_vocab=20,
                                                   costs='1,1.05,1.1,1.15,1.2')),
    'kangaroo-adaptive': ('kangaroo', dict(exit_layer=2, stop_below=0.05, gamma=4,
                                           adaptive=True, costs='1,1.1,1.2,1.3')),
}


def params_for(method, params):
  """The '-hot' methods decode with the reduced-vocabulary EAGLE-3 draft, Medusa heads or MTP
  modules."""
  if not method.endswith('-hot'):
    return params
  return dict(params, eagle3=params['eagle3_hot'], medusa=params['medusa_hot'],
              mtp=params['mtp_hot'])


def reference_params(method, params):
  """The params a from-scratch reference of `method`'s drafts reads: the '-hot' methods'
  trained sets (`params_for`); for a '-vocab' method on a trained drafter, its own params
  with the decode-time set as `hot_ids` and its per-token head correction cut to those rows
  (built here, not by the code under test)."""
  params = params_for(method, params)
  name = METHODS[method][0]
  if not method.endswith('-vocab') or name not in ('eagle3', 'eagle1', 'medusa', 'mtp'):
    return params
  p = dict(params[name], hot_ids=jnp.asarray(HOT_IDS, jnp.int32))
  if 'head_delta' in p:
    p['head_delta'] = p['head_delta'][np.asarray(HOT_IDS)]
  return dict(params, **{name: p})


def propose_from_hidden(dec, models, params, seed):
  """(tree, h_BxD, root_B) of a head drafter's proposal from a random hidden state."""
  from decoding.speculative import head_drafters  # pylint: disable=g-import-not-at-top
  drafter = dec.get_drafter().resolve(models)
  B = 3
  env = drafter_lib.Env(models=models, params=drafter.with_draft_vocab(params),
                        sampling=dec.sampling, mode=dec.verification_mode(), row_keys_B=None,
                        prompt_BxP=jnp.zeros((B, 4), jnp.int32),
                        prompt_len_B=jnp.full((B,), 4), cache_size=CACHE, max_new_tokens=N_NEW)
  h = jax.random.normal(jax.random.key(seed), (B, models.target.cfg.d_model))
  root = jnp.asarray([3, 7, 11], jnp.int32)
  state = head_drafters.HiddenState(h, head_drafters.draft_head(env, drafter.kind))
  tree = drafter.propose(env, state, None, root, jnp.full((B,), 4), jnp.ones((B,), bool))[0]
  return tree, h, root


def _loop_env(dec, models):
  """(drafter, env(params), lens_B) of the loop over the ragged PROMPTS batch; env gives the
  drafter its decode-time draft vocabulary as generate does."""
  B = len(PROMPTS)
  prompt = np.full((B, max(map(len, PROMPTS))), PAD, np.int32)
  for i, p in enumerate(PROMPTS):
    prompt[i, :len(p)] = p
  lens = jnp.asarray([len(p) for p in PROMPTS], jnp.int32)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(B))
  drafter = dec.get_drafter().resolve(models)

  def env(params):
    return drafter_lib.Env(models=models, params=drafter.with_draft_vocab(params),
                           sampling=dec.sampling, mode=dec.verification_mode(),
                           row_keys_B=keys, prompt_BxP=jnp.asarray(prompt), prompt_len_B=lens,
                           cache_size=CACHE, max_new_tokens=N_NEW)
  return drafter, env, lens


def step_fn(dec, models, params, eos):
  """init and step of the loop, jitted, to inspect the state between steps."""
  del params  # the jitted functions take them
  drafter, env, lens = _loop_env(dec, models)
  init = jax.jit(lambda p: loop.init_state(drafter, env(p), eos_id=eos, pad_id=PAD))
  step = jax.jit(lambda p, s: loop.step(drafter, env(p), s, eos_id=eos, pad_id=PAD))
  return init, step, lens


def proposals_along_a_run(init, step, propose, params, steps=6, prompts=PROMPTS):
  """(tree, b, committed) for each active row b at each of `steps` loop steps (`step_fn`'s
  init and step, `propose_fn`'s propose): the tree the drafter proposes from that state and
  row b's committed text (prompt + generated tokens), for a from-scratch reference."""
  s = init(params)
  for _ in range(steps):
    tree = propose(params, s)
    n_gen = np.asarray(s.progress.num_generated_B)
    for b in np.nonzero(~np.asarray(s.progress.done_B))[0]:
      yield tree, b, list(prompts[b]) + list(np.asarray(s.progress.tokens_BxN[b, :n_gen[b]]))
    s = step(params, s)


def propose_fn(dec, models):
  """propose(params, state) -> the tree the drafter proposes from a loop state of `step_fn`
  (jitted): what a test compares with a from-scratch reference."""
  drafter, env, lens = _loop_env(dec, models)

  @jax.jit
  def propose(p, s):
    base_B = lens + s.progress.num_generated_B - 1
    return drafter.propose(env(p), s.drafter, s.cache, s.last_B, base_B,
                           s.progress.active_B)[0]
  return propose
