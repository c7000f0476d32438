"""Decode-time draft vocabularies (FR-Spec, `draft_vocab=N`) of the draft model and the early
exits (EAGLE, Medusa and MTP given one: test_spec_head_drafts.py): every drafted token is
what the drafter's head restricted to the set picks, computed from scratch (greedy == AR in
test_spec_decoders.py cannot see a drafter that ignores the set: the verifier corrects any
draft); the ids a workbench counts; and the errors."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decoding import registry, run_decoder
from models import draft_vocab
import spec_cases
from spec_cases import CACHE, HOT_IDS, METHODS, N_NEW, PAD, PROMPTS, propose_fn, step_fn


@pytest.fixture(scope='module')
def setup():
  return spec_cases.build_setup()


def _reference_logits(method, models, params):
  """logits [V] after a token sequence, from scratch (no cache), of the drafter's head."""
  if method.startswith('chain'):
    draft = models['draft']
    return jax.jit(lambda seq: draft.apply({'params': params['draft']}, seq[None])
                   .logits_BxTxV[0, -1])
  exit_layer = METHODS[method][1]['exit_layer']
  return jax.jit(lambda seq: models.target.apply(
      {'params': params['target']}, seq[None], layer_range=(0, exit_layer)).logits_BxTxV[0, -1])


@pytest.mark.parametrize('method', ['chain', 'chain-vocab', 'layerskip', 'layerskip-vocab'])
def test_chain_drafts_are_the_heads_best_token_in_the_set(setup, method):
  """Node d of every proposed chain is the argmax, over the draft vocabulary (the whole one
  without `draft_vocab`), of the drafter's logits after the committed text and nodes 1..d-1;
  with the set, some of the unrestricted argmaxes lie outside it (so the set mattered)."""
  models, params, eos, _ = setup
  name, settings = METHODS[method]
  dec = registry.build(name, settings)
  init, step, _ = step_fn(dec, models, params, eos)
  propose = propose_fn(dec, models)
  hot = np.asarray(HOT_IDS) if settings.get('draft_vocab') else np.arange(spec_cases.V)
  ref = _reference_logits(method, models, params)
  checked = outside = 0
  for tree, b, seq in spec_cases.proposals_along_a_run(init, step, propose, params):
    tok = np.asarray(tree.tokens_BxT[b])
    for node in np.nonzero(np.asarray(tree.valid_BxT[b]))[0][1:]:
      lg = np.asarray(ref(jnp.asarray(seq + list(tok[1:node]), jnp.int32)))
      best = hot[np.argmax(lg[hot])]
      assert tok[node] in hot, (method, b, node, tok[node])
      assert tok[node] == best or lg[tok[node]] >= lg[best] - 1e-4, (method, b, node)
      outside += int(np.argmax(lg)) not in hot
      checked += 1
  assert checked > 20
  if settings.get('draft_vocab'):
    assert outside > 0


def test_draft_vocab_errors(setup):
  """A decoder with a draft vocabulary whose ids are not in params, ids of the wrong size or
  dtype, a negative size, and a drafter trained over a set of its own give one clear line
  each."""
  models, params, eos, _ = setup
  run = lambda dec, p: run_decoder(dec, models, p, PROMPTS, max_new_tokens=N_NEW,
                                   cache_size=CACHE, eos_id=eos, pad_id=PAD)
  without = {k: v for k, v in params.items() if k != draft_vocab.RUN_KEY}
  for method in ('chain-vocab', 'dynamic-tree-vocab', 'layerskip-vocab', 'kangaroo-vocab'):
    name, settings = METHODS[method]
    dec = registry.build(name, settings)
    assert dec.draft_vocab_sizes() == (20,)
    with pytest.raises(ValueError, match=r"draft_vocab=20 needs the 20 most frequent tokens.*"
                                         r"have sizes none"):
      run(dec, without)
  dec = registry.build('layerskip', dict(exit_layer=1, draft_vocab=12))
  with pytest.raises(ValueError, match=r"have sizes \['20'\]"):
    run(dec, params)
  wrong = dict(params, **{draft_vocab.RUN_KEY: {'12': jnp.zeros((12,), jnp.float32)}})
  with pytest.raises(ValueError, match='must be 12 integer ids'):
    run(dec, wrong)
  with pytest.raises(ValueError, match='draft_vocab must be >= 0'):
    registry.build('speculative', dict(draft_workdir='x', draft_vocab=-1))
  # a drafter trained over a set of its own takes no decode-time one
  for method in ('eagle3-chain-hot', 'medusa-hot', 'mtp-hot'):
    name, settings = METHODS[method]
    dec = registry.build(name, dict(settings, draft_vocab=20))
    assert dec.draft_vocab_sizes() == (20,)
    with pytest.raises(ValueError, match='trained over a draft vocabulary of 20 tokens'):
      run(dec, spec_cases.params_for(method, params))
  assert registry.build('speculative', dict(draft_workdir='x')).draft_vocab_sizes() == ()
  assert registry.build('prompt_lookup').draft_vocab_sizes() == ()


def test_workbench_counts_the_training_split_and_decodes_with_it(trained_workdir):
  """`Workbench.draft_vocabulary(N)` is the N most frequent ids of the run's training split
  under its tokenizer (ties to the lower id), equal to a plain Counter over the same
  documents; sizes outside [1, V) are refused; decoders given a size get those ids and keep
  AR's tokens (what sample.py runs)."""
  import data as data_lib  # pylint: disable=g-import-not-at-top
  from workbench import Workbench  # pylint: disable=g-import-not-at-top
  bench = Workbench.load(trained_workdir)
  cfg = data_lib.DataConfig(**bench.config['data'])
  counter = collections.Counter()
  for text in data_lib.load_texts(cfg, cfg.train_split):
    counter.update(bench.tokenizer.encode(text, add_bos=True, add_eos=True))
  ranked = sorted(counter, key=lambda t: (-counter[t], t))
  for n in (1, 7, 40):
    assert bench.draft_vocabulary(n).tolist() == sorted(ranked[:n])
  assert bench.draft_vocabulary(7).dtype == np.int32
  for n in (0, bench.tokenizer.vocab_size):
    with pytest.raises(ValueError, match=r'draft_vocab must be in \[1, '):
      bench.draft_vocabulary(n)
  decoders = [bench.decoder('ar'), bench.decoder('layerskip:exit_layer=1:draft_vocab=40')]
  assert bench.draft_vocab_params(decoders[:1]) == {}
  ids = bench.draft_vocab_params(decoders)[draft_vocab.RUN_KEY]['40']
  assert ids.tolist() == sorted(ranked[:40])
  _, prompts = bench.heldout_prompts(2, 24)
  results = bench.run(decoders, prompts, max_new_tokens=12)
  (ar_rows, _), (ls_rows, _) = results.values()
  assert [r.tokens for r in ls_rows] == [r.tokens for r in ar_rows]


def test_del_shadow_tokens_come_from_the_set(setup):
  """DEL over a draft vocabulary: after each step every candidate exit's shadow prediction
  (what that exit would have drafted at a node) is an id of the set, and it differs from the
  same exit's prediction over the whole vocabulary somewhere (the set mattered)."""
  models, params, eos, _ = setup
  preds = {}
  for vocab in (0, 20):
    dec = registry.build('del', dict(draft_vocab=vocab))
    init, step, _ = step_fn(dec, models, params, eos)
    s, seen = init(params), []
    for _ in range(5):
      s = step(params, s)
      seen.append(np.asarray(s.drafter.shadow_ExBxT))
    preds[vocab] = np.stack(seen)
  shown = preds[20] >= 0
  assert shown.sum() > 20
  assert set(preds[20][shown].tolist()) <= set(HOT_IDS)
  whole = preds[0][preds[0] >= 0]
  assert not set(whole.tolist()) <= set(HOT_IDS)
