"""What the head drafters propose, against references: each Medusa node is its head's r-th
best token, each MTP node its module's best given its parent, each EAGLE node what the draft
layer computes from scratch along the node's path (whole and reduced draft vocabularies);
and EAGLE's errors. greedy == AR cannot see a drafter that proposes the wrong thing: these
can."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decoding import registry, run_decoder
from models import eagle, heads
import spec_cases
from spec_cases import CACHE, METHODS, N_NEW, PAD, PROMPTS, V, params_for, step_fn
from spec_cases import propose_fn, propose_from_hidden, reference_params


@pytest.fixture(scope='module')
def setup():
  return spec_cases.build_setup()


@pytest.mark.parametrize('method', ['mtp', 'mtp-hot', 'mtp-vocab'])
def test_mtp_tree_follows_each_modules_best_tokens(setup, method):
  """A 2 x 2 MTP tree: the root's children are module 0's two best tokens, each grandchild one
  of module 1's two best given its parent (whole vocabulary, or the modules' reduced
  vocabulary mapped to target ids: trained with one, or given one at decode time)."""
  models, params, _, _ = setup
  dec = registry.build('mtp', dict(tree='static', branching='2,2',
                                   draft_vocab=20 if method.endswith('-vocab') else 0))
  tree, h, root = propose_from_hidden(dec, models, params_for(method, params), 12)
  params = reference_params(method, params)
  cfg = models.target.cfg
  p = dict(params['mtp'])
  vocab = np.asarray(p.pop('hot_ids', np.arange(V)))
  tp = params['target']
  module = heads.MTPModules(cfg, 3)
  in_emb, out_emb = heads.input_embedding(tp), heads.output_embedding(tp, cfg)[vocab]
  step = lambda k, hh, t: module.apply({'params': p}, k, hh, t, in_emb, out_emb,
                                       method=heads.MTPModules.step)
  tok, parents = np.asarray(tree.tokens_BxT), np.asarray(tree.parents_BxT)
  h1, lg0 = step(0, h[:, None], root[:, None])
  best0 = vocab[np.argsort(-np.asarray(lg0)[:, 0], axis=-1, kind='stable')[:, :2]]
  kids = [n for n in range(tok.shape[1]) if parents[0, n] == 0]
  np.testing.assert_array_equal(tok[:, kids], best0)
  for c in kids:
    _, lg1 = step(1, h1, jnp.asarray(tok[:, c])[:, None])
    best1 = vocab[np.argsort(-np.asarray(lg1)[:, 0], axis=-1, kind='stable')[:, :2]]
    grand = [n for n in range(tok.shape[1]) if parents[0, n] == c]
    np.testing.assert_array_equal(tok[:, grand], best1)


@pytest.mark.parametrize('method', ['medusa', 'medusa-hot', 'medusa-vocab'])
def test_medusa_tree_holds_each_heads_best_tokens(setup, method):
  """Node (depth d, rank r) of the Medusa tree is head d's r-th best token: over the whole
  vocabulary, or over the heads' reduced vocabulary (trained with one, or given one at decode
  time) mapped to target ids."""
  models, params, _, _ = setup
  dec = registry.build(*METHODS[method])
  tree, h, root = propose_from_hidden(dec, models, params_for(method, params), 11)
  params = reference_params(method, params)
  cfg = models.target.cfg
  p = dict(params['medusa'])
  vocab = np.asarray(p.pop('hot_ids', np.arange(V)))
  out_emb = heads.output_embedding(params['target'], cfg)[vocab]
  logits = np.asarray(heads.MedusaHeads(cfg, p['w'].shape[0]).apply(
      {'params': p}, h[:, None], out_emb))[:, 0]  # [B, K, entries]
  tpl = dec.get_drafter().resolve(models).template
  tok = np.asarray(tree.tokens_BxT)
  np.testing.assert_array_equal(tok[:, 0], root)
  for node in range(1, tpl.size):
    d, r = tpl.depths[node], tpl.ranks[node]
    want = vocab[np.argsort(-logits[:, d - 1], axis=-1, kind='stable')[:, r]]
    np.testing.assert_array_equal(tok[:, node], want, err_msg=f'node {node}')
  if method != 'medusa':
    assert set(tok[:, 1:].ravel()) <= set(vocab.tolist())


@pytest.mark.parametrize('method', ['eagle3-chain', 'eagle1-chain', 'eagle3-dynamic',
                                    'eagle3-chain-hot', 'eagle3-dynamic-hot',
                                    'eagle3-chain-vocab', 'eagle3-dynamic-vocab',
                                    'eagle1-dynamic-vocab'])
def test_eagle_drafts_match_a_reference_without_cache(setup, method):
  """Every drafted node equals what the draft layer computes from scratch (no cache) on the
  committed text with the target's features, then its own outputs along the node's path:
  the chain's node is the argmax, a dynamic tree's node is among the top_k. This checks the
  draft cache stays consistent across verification (commit / roll back), which greedy == AR
  cannot see (the verifier corrects any draft)."""
  models, params, eos, _ = setup
  params = params_for(method, params)
  name, settings = METHODS[method]
  dec = registry.build(name, settings)
  init, step, _ = step_fn(dec, models, params, eos)
  propose = propose_fn(dec, models)
  drafter = dec.get_drafter().resolve(models)
  variant, ids, k = drafter.variant, drafter.layers, drafter.max_children
  cfg, tp = models.target.cfg, params['target']
  ref = reference_params(method, setup[1])
  ep = dict(ref[variant])
  vocab = np.asarray(ep.pop('hot_ids', np.arange(cfg.vocab_size)))  # draft entry -> target id
  rows = len(vocab) if 'hot_ids' in ref[variant] else 0
  module = eagle.EagleDraft(cfg, variant, max(len(ids), 1), 'head_delta' in ep, rows)
  in_emb, out_emb = heads.input_embedding(tp), heads.output_embedding(tp, cfg)
  out_emb = out_emb[vocab]  # the head rows of the draft's vocabulary
  L = 64

  @jax.jit
  def features(tokens_L, n):  # target features of positions < n
    pos = jnp.where(jnp.arange(L) < n, jnp.arange(L), -1)[None]
    out = models.target.apply({'params': tp}, tokens_L[None], pos, return_hidden=True)
    return eagle.target_features(out, variant, ids)[0]

  @jax.jit
  def draft(x_LxF_fused, tokens_L, n):  # the draft layer over pairs at positions 1 .. n - 1
    pos = jnp.where((jnp.arange(L) >= 1) & (jnp.arange(L) < n), jnp.arange(L), -1)[None]
    g, logits, _ = module.apply({'params': ep}, x_LxF_fused[None], tokens_L[None], pos, in_emb,
                                out_emb)
    return g[0], logits[0]

  fuse = jax.jit(lambda f: module.apply({'params': ep}, f, method=eagle.EagleDraft.fuse))
  checked = 0
  for tree, b, seq in spec_cases.proposals_along_a_run(init, step, propose, params):
    base_pos = len(seq) - 1
    toks = np.zeros(L, np.int32)
    toks[:len(seq)] = seq
    feat = features(jnp.asarray(toks), base_pos)
    x = np.zeros((L, cfg.d_model), np.float32)
    x[1:base_pos + 1] = np.asarray(fuse(feat[None]))[0, :base_pos]
    parents = np.asarray(tree.parents_BxT[b])
    tok = np.asarray(tree.tokens_BxT[b])
    for node in np.nonzero(np.asarray(tree.valid_BxT[b]))[0][1:]:
      path = []
      a = parents[node]
      while a > 0:
        path.append(a)
        a = parents[a]
      xs, ts = x.copy(), toks.copy()
      g, logits = draft(jnp.asarray(xs), jnp.asarray(ts), base_pos + 1)
      for depth, a in enumerate(reversed(path)):  # own-feature pairs along the path
        q = base_pos + 1 + depth
        xs[q], ts[q] = np.asarray(g[q - 1]), tok[a]
        g, logits = draft(jnp.asarray(xs), jnp.asarray(ts), q + 1)
      lg = np.asarray(logits[base_pos + len(path)])
      top = vocab[np.argsort(-lg)[:k]]
      assert tok[node] in top, (method, b, node, top)
      if k == 1:
        assert tok[node] == top[0]
      checked += 1
  assert checked > 20


def test_eagle_errors(setup):
  """A run without the draft layer, a static tree, and feature layers the layer was not
  trained on give one clear line each."""
  from models.kind import ModelKind  # pylint: disable=g-import-not-at-top
  models, params, eos, _ = setup
  run = lambda dec, p=params: run_decoder(dec, models, p, PROMPTS, max_new_tokens=N_NEW,
                                          cache_size=CACHE, eos_id=eos, pad_id=PAD)
  with pytest.raises(ValueError, match=r'eagle3 heads in the target run.*spec_heads.py:eagle3'):
    registry.build('eagle3').for_model({'target': ModelKind(heads=('medusa',))})
  assert registry.build('eagle1').for_model({'target': ModelKind(heads=('eagle1',))})
  with pytest.raises(ValueError, match=r"'eagle1' drafter needs an eagle1 draft layer"):
    run(registry.build('eagle1'), {k: v for k, v in params.items() if k != 'eagle1'})
  with pytest.raises(ValueError, match="tree='chain' or 'dynamic'"):
    registry.build('eagle3', {'tree': 'static'})
  with pytest.raises(ValueError, match='no adaptive draft length'):
    registry.build('eagle3', {'tree': 'chain', 'adaptive': True})
  with pytest.raises(ValueError, match='trained on 3 fused target layers'):
    run(registry.build('eagle3', {'feature_layers': '1/3'}))
  with pytest.raises(ValueError, match='EAGLE feature layer 9'):
    run(registry.build('eagle3', {'feature_layers': '1/2/9'}))
  # A reduced draft vocabulary whose ids were cast with the weights, that does not match the
  # head correction's rows, or that names ids outside the target's vocabulary.
  hot = params['eagle3_hot']
  bad = {'float ids': (dict(hot, hot_ids=hot['hot_ids'].astype(jnp.bfloat16)), 'not integers'),
         'rows': (dict(hot, head_delta=hot['head_delta'][:-1]), '19 rows but its vocabulary 20')}
  for what, (e3, msg) in bad.items():
    with pytest.raises(ValueError, match=msg):
      run(registry.build('eagle3', {'tree': 'chain'}), dict(params, eagle3=e3))
  outside = dict(hot, hot_ids=hot['hot_ids'] + V)  # every draft is then an invalid id
  with pytest.raises(RuntimeError, match='outside the vocabulary'):
    run(registry.build('eagle3', {'tree': 'chain'}), dict(params, eagle3=outside))
  cfg = models.target.cfg
  for ids, msg in ((range(V), 'between 1 and 47'), ([3, 2], 'ascending, distinct'),
                   ([1, V], r'in \[0, 48\)'), ([1.0, 2.5], 'must be integers')):
    with pytest.raises(ValueError, match=msg):
      eagle.init_params(cfg, 'eagle3', (1,), jax.random.key(0), hot_ids=ids)
