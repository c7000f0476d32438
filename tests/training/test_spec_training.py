"""Training recipes for drafters: Medusa / MTP heads and the Kangaroo adapter on a frozen
target, draft distillation; the trained runs drive their decoders (greedy == AR)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import testlib
import workbench
from configs import spec_draft, spec_heads
from decoding import registry
from training import trainer
from workdir import loading
from training.objectives import make_objective
from training.objectives import spec_draft as spec_draft_lib

STEPS = 3


def _train(config, data_dir, target, workdir):
  config.data.data_dir = data_dir
  config.spec.target_workdir = target
  config.train.update(steps=STEPS, eval_every=STEPS, checkpoint_every=STEPS, eval_batches=1,
                      async_checkpointing=False)
  return trainer.train_and_evaluate(config, workdir)


@pytest.fixture(scope='module')
def runs(tmp_path_factory, data_dir, trained_workdir):
  out = {}
  for kind in ('medusa', 'mtp', 'kangaroo', 'eagle3'):
    workdir = str(tmp_path_factory.mktemp(kind))
    cfg = spec_heads.get_config(f'{kind},test')
    cfg.data.batch_size = 8
    if kind in ('eagle3', 'medusa', 'mtp'):  # a reduced draft vocabulary: 48 commonest tokens
      cfg.spec.draft_vocab = 48
    out[kind] = (workdir, _train(cfg, data_dir, trained_workdir, workdir))
  workdir = str(tmp_path_factory.mktemp('draft'))
  out['draft'] = (workdir, _train(spec_draft.get_config('corpus,test'), data_dir,
                                  trained_workdir, workdir))
  return out


def test_heads_train_on_a_frozen_target(runs, trained_workdir):
  target = loading.load_model(trained_workdir)
  for kind in ('medusa', 'mtp', 'kangaroo', 'eagle3'):
    workdir, metrics = runs[kind]
    assert np.isfinite(metrics['train']['loss']) and np.isfinite(metrics['eval']['loss'])
    run = loading.load_model(workdir)
    assert set(run.extras) == {kind}
    # The base was frozen: the run holds exactly the target's weights.
    jax.tree.map(np.testing.assert_array_equal, run.params, target.params)
  assert 'head3_acc' in runs['mtp'][1]['eval'] and 'head4_acc' in runs['medusa'][1]['eval']
  assert 0 <= runs['kangaroo'][1]['eval']['top1_agreement'] <= 1
  assert 'agree3' in runs['eagle3'][1]['eval']  # three training-time-test steps
  assert 0 < runs['eagle3'][1]['eval']['hot_mass'] <= 1


def test_eagle_draft_vocabulary_is_the_commonest_tokens(runs, data_dir, trained_workdir):
  """The reduced vocabulary (of EAGLE-3, the Medusa heads and the MTP modules) is the 48
  commonest tokens of the training split (counted here by a plain Counter), stored as int32
  ids and left unchanged by training."""
  import collections  # pylint: disable=g-import-not-at-top
  import data as data_lib  # pylint: disable=g-import-not-at-top
  cfg = spec_heads.get_config('eagle3,test')
  cfg.data.data_dir = data_dir
  dc = trainer.data_config(cfg)
  tok = loading.load_model(trained_workdir).tokenizer
  counts = collections.Counter()
  for text in data_lib.load_texts(dc, dc.train_split):
    counts.update(tok.encode(text, add_bos=True, add_eos=True))
  ranked = sorted(counts, key=lambda t: (-counts[t], t))
  ids = loading.load_model(runs['eagle3'][0]).extras['eagle3']['hot_ids']
  assert ids.dtype == jnp.int32 and ids.shape == (48,)
  np.testing.assert_array_equal(np.asarray(ids), sorted(ranked[:48]))
  for kind in ('medusa', 'mtp'):
    np.testing.assert_array_equal(loading.load_model(runs[kind][0]).extras[kind]['hot_ids'], ids)
  # Loading in bf16 casts the weights, not the ids (bf16 holds integers exactly only to 256).
  cast = loading.load_model(runs['eagle3'][0], dtype='bfloat16').extras['eagle3']
  assert cast['hot_ids'].dtype == jnp.int32 and cast['fc'].dtype == jnp.bfloat16
  np.testing.assert_array_equal(cast['hot_ids'], ids)


def test_trained_runs_drive_their_decoders(runs, trained_workdir):
  """What sample.py does: the heads runs attach to the target (`add_heads`); the draft loads
  as an extra run."""
  bench = workbench.Workbench.load(trained_workdir)
  for kind in ('medusa', 'mtp', 'kangaroo', 'eagle3'):
    bench.add_heads(kind, runs[kind][0])
  # Attached heads count as the target's (a decoder that drafts with them passes its check).
  assert bench.decoder('eagle3').name == 'eagle3' and 'medusa' in bench.kind.heads
  tok = bench.tokenizer
  prompts = [tok.encode(t, add_bos=True) for t in ('def f(x):\n', 'import o', 'class')]
  decoders = [registry.build('ar'), registry.build('medusa', {'gamma': 3}),
              registry.build('mtp', {'gamma': 3}), registry.build('kangaroo', {'exit_layer': 1}),
              registry.build('eagle3', {'gamma': 3, 'top_k': 2, 'tree_nodes': 6}),
              registry.build('speculative', {'draft_workdir': runs['draft'][0]})]
  results = bench.run(decoders, prompts, max_new_tokens=12)
  ref = [r.tokens for r in results['ar'][0]]
  for name, (rows, _) in results.items():
    assert [r.tokens for r in rows] == ref, name


def test_draft_distillation_on_generated_text(trained_workdir):
  """The 'generated' source samples the rows' continuations from the target; the loss only
  covers generated positions and the draft learns there (finite loss and gradient)."""
  from models import Transformer, init_params  # pylint: disable=g-import-not-at-top
  cfg = spec_draft.get_config('generated,test')
  cfg.spec.target_workdir = trained_workdir
  model = Transformer(trainer.model_config(cfg, 272))
  objective = make_objective('draft_distill', model, cfg)
  params = {'model': init_params(model, jax.random.key(0)),
            **objective.extras(jax.random.key(1))}
  tokens = jnp.tile(jnp.arange(33, dtype=jnp.int32)[None] % 200 + 10, (2, 1))
  loss_and_grad = jax.jit(jax.value_and_grad(objective.loss_fn, has_aux=True))
  (loss, metrics), grads = loss_and_grad(params, {'tokens': tokens}, jax.random.key(2))
  assert np.isfinite(float(loss)) and float(metrics['tokens_sum']) == 2 * (32 - 7)
  assert float(jnp.abs(grads['model']['layer_0']['mlp']['up']).sum()) > 0
  teacher = loading.load_model(trained_workdir)
  rows = jax.jit(lambda t, k: spec_draft_lib.generate_rows(teacher.model, teacher.params, t, 8,
                                                           1.0, k))(tokens, jax.random.key(3))
  np.testing.assert_array_equal(rows[:, :8], tokens[:, :8])
  assert not np.array_equal(rows[:, 8:], tokens[:, 8:])
  # Temperature 0 is the teacher's greedy continuation (it divided the logits by 0 before).
  greedy = jax.jit(lambda t, k: spec_draft_lib.generate_rows(
      teacher.model, teacher.params, t, 8, 0.0, k))(tokens, jax.random.key(3))
  # Reference: one jitted full forward (no cache) per position over a fixed-size buffer; the
  # causal mask makes the logits at t independent of the buffer beyond t.
  forward = jax.jit(lambda t: teacher.model.apply({'params': teacher.params}, t).logits_BxTxV)
  want = np.array(tokens)
  for t in range(8, tokens.shape[1]):
    want[:, t] = np.argmax(np.asarray(forward(jnp.asarray(want)))[:, t - 1], -1)
  np.testing.assert_array_equal(greedy, want)


def test_recipe_errors(trained_workdir):
  from models import Transformer  # pylint: disable=g-import-not-at-top
  from testlib import small_config  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match='Unknown head kind'):
    spec_heads.get_config('hydra')
  model = Transformer(small_config())
  with pytest.raises(ValueError, match='spec'):
    make_objective('medusa_heads', model, None)
  cfg = spec_heads.get_config('medusa,test')
  cfg.spec.target_workdir = ''
  with pytest.raises(ValueError, match='target_workdir'):
    make_objective('medusa_heads', model, cfg)
  cfg = spec_draft.get_config('corpus,test')
  cfg.spec.target_workdir = trained_workdir
  with pytest.raises(ValueError, match='same tokenizer'):
    make_objective('draft_distill', Transformer(small_config(vocab_size=64)), cfg)
  for kind, objective in (('kangaroo', 'kangaroo_adapter'), ('chimera', 'chimera_draft')):
    cfg = spec_heads.get_config(f'{kind},test')
    cfg.spec.draft_vocab = 32
    with pytest.raises(ValueError, match=f'{objective} has no reduced draft vocabulary'):
      make_objective(objective, model, cfg)
  cfg = spec_heads.get_config('medusa,test')
  cfg.spec.update(target_workdir=trained_workdir, draft_vocab=100000)
  with pytest.raises(ValueError, match=r'spec.draft_vocab must be in \[1, '):
    make_objective('medusa_heads', model, cfg)
  cfg.spec.target_workdir = '/nonexistent'
  with pytest.raises(ValueError, match='counts tokens with the target'):
    make_objective('medusa_heads', model, cfg)


def test_eagle_training_time_test_unrolls_like_decoding():
  """Step j of the training-time test at pair i is what drafting computes: the pairs of the
  committed text (target features) up to position i + 1, then the draft's own outputs fed
  back along the path, each new pair seeing the prefix and its own path only (the mask)."""
  from models import eagle  # pylint: disable=g-import-not-at-top
  from models import heads  # pylint: disable=g-import-not-at-top
  from testlib import small_config  # pylint: disable=g-import-not-at-top
  from training.objectives import eagle as eagle_obj  # pylint: disable=g-import-not-at-top
  cfg = small_config(vocab_size=40, num_layers=2)
  ids = eagle.feature_layers(2)
  module = eagle.EagleDraft(cfg, 'eagle3', len(ids))
  p = jax.tree.map(lambda x: 3 * x, eagle.init_params(cfg, 'eagle3', ids, jax.random.key(0)))
  emb = 0.5 * jax.random.normal(jax.random.key(1), (40, cfg.d_model))
  T, K = 10, 3
  tokens = jax.random.randint(jax.random.key(2), (2, T), 0, 40)
  feats = jax.random.normal(jax.random.key(3), (2, T - 1, 3 * cfg.d_model))
  x0 = module.apply({'params': p}, feats, method=eagle.EagleDraft.fuse)
  gs, logits, xs = eagle_obj.ttt_unroll(module, p, x0, tokens, emb, emb, K)
  for j in range(1, K):
    np.testing.assert_array_equal(xs[j], gs[j - 1])  # own outputs feed the next step
  run = jax.jit(lambda x, t, pos: module.apply({'params': p}, x, t, pos, emb, emb)[:2])
  for i in (0, 3, T - 1 - K):
    # Prefix pairs 0 .. i at positions 1 .. i + 1, then own pairs along the path.
    x, tok = x0[:, :i + 1], tokens[:, 1:i + 2]
    for j in range(K):
      pos = jnp.broadcast_to(jnp.arange(1, x.shape[1] + 1), tok.shape)
      g, lg = run(x, tok, pos)
      np.testing.assert_allclose(logits[j][:, i], lg[:, -1], atol=1e-4, rtol=1e-4)
      x = jnp.concatenate([x, g[:, -1:]], 1)
      tok = jnp.concatenate([tok, tokens[:, i + 2 + j:i + 3 + j]], 1)
  del heads


@pytest.mark.parametrize('kind', ['eagle3', 'eagle1'])
def test_eagle_loss_decreases_on_the_test_preset(trained_workdir, kind):
  from models import Transformer  # pylint: disable=g-import-not-at-top
  cfg = spec_heads.get_config(f'{kind},test')
  cfg.spec.target_workdir = trained_workdir
  target = loading.load_model(trained_workdir)
  objective = make_objective(f'{kind}_draft', Transformer(target.model.cfg), cfg)
  extras = objective.extras(jax.random.key(0))
  extras, losses, metrics = testlib.train_extras(
      objective, target.params, extras, testlib.code_batch(target.tokenizer, 5), steps=12,
      learning_rate=3e-3)
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.8 * losses[0], losses
  assert set(extras) == {kind}
  if kind == 'eagle3':
    assert {'agree1', 'agree2', 'agree3'} <= set(metrics)
  else:
    assert 'reg1' in metrics
  assert 'head_delta' not in extras[kind]  # the recipes read the target's head by default


def test_eagle3_own_head_is_trained(trained_workdir):
  """With spec.own_head the EAGLE-3 recipe trains a correction to the target's head (zero at
  the start), and its loss falls."""
  from models import Transformer  # pylint: disable=g-import-not-at-top
  cfg = spec_heads.get_config('eagle3,test')
  cfg.spec.target_workdir = trained_workdir
  cfg.spec.own_head = True
  target = loading.load_model(trained_workdir)
  objective = make_objective('eagle3_draft', Transformer(target.model.cfg), cfg)
  extras = objective.extras(jax.random.key(0))
  assert not np.asarray(extras['eagle3']['head_delta']).any()
  extras, losses, _ = testlib.train_extras(
      objective, target.params, extras, testlib.code_batch(target.tokenizer, 5), steps=12,
      learning_rate=3e-3)
  assert losses[-1] < 0.8 * losses[0], losses
  assert np.abs(np.asarray(extras['eagle3']['head_delta'])).max() > 0


def test_eagle_own_head_starts_as_the_targets_and_adds_its_correction():
  """With `own_head` the draft's logits are x . (E_target + head_delta): at initialisation
  (delta zero) exactly the logits of the same layer without its own head; with a delta,
  those logits plus x . delta (x: the head's input, the out-normed output feature)."""
  from models import eagle  # pylint: disable=g-import-not-at-top
  from testlib import small_config  # pylint: disable=g-import-not-at-top
  cfg = small_config(vocab_size=40, num_layers=2)
  ids = eagle.feature_layers(2)
  p = eagle.init_params(cfg, 'eagle3', ids, jax.random.key(0), own_head=True)
  assert p['head_delta'].shape == (40, cfg.d_model) and not np.asarray(p['head_delta']).any()
  plain = {k: v for k, v in p.items() if k != 'head_delta'}
  assert eagle.module_for(cfg, 'eagle3', plain).own_head is False
  assert eagle.module_for(cfg, 'eagle3', p).own_head is True
  emb = 0.5 * jax.random.normal(jax.random.key(1), (40, cfg.d_model))
  x = jax.random.normal(jax.random.key(2), (2, 5, cfg.d_model))
  tok = jax.random.randint(jax.random.key(3), (2, 5), 0, 40)
  pos = jnp.broadcast_to(jnp.arange(1, 6), (2, 5))
  call = lambda prm: eagle.module_for(cfg, 'eagle3', prm).apply({'params': prm}, x, tok, pos,
                                                               emb, emb)
  g0, lg0, _ = call(plain)
  g1, lg1, _ = call(p)
  np.testing.assert_array_equal(g0, g1)
  np.testing.assert_allclose(lg1, lg0, rtol=1e-6, atol=1e-6)
  delta = 0.2 * jax.random.normal(jax.random.key(4), p['head_delta'].shape)
  _, lg2, _ = call(dict(p, head_delta=delta))
  norm = eagle.EagleDraft(cfg, 'eagle3', len(ids)).apply(
      {'params': plain}, g0, method=lambda m, g: m.out_norm(g))
  np.testing.assert_allclose(lg2 - lg0, jnp.einsum('BTD,VD->BTV', norm, delta), rtol=1e-4,
                             atol=1e-4)


def test_heads_cross_entropy_over_a_reduced_vocabulary():
  """Medusa's loss over a draft vocabulary: CE of each head over the targets inside it (their
  entries' log-softmax), accuracy over every position (a target outside it is a miss)."""
  from training.objectives import spec_heads as heads_obj  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  V, hot = 12, np.asarray([1, 4, 5, 9], np.int32)
  B, T, K = 2, 6, 2
  logits = rng.normal(size=(B, T, K, len(hot))).astype(np.float32)
  tokens = rng.integers(0, V, (B, T + 1)).astype(np.int32)
  tokens[0, 2:5] = [4, 9, 1]  # some targets inside the set
  loss, metrics = heads_obj._weighted_ce(  # pylint: disable=protected-access
      jnp.asarray(logits), jnp.asarray(tokens), 0.5, jnp.asarray(hot), V)
  total = norm = 0.0
  for k in range(K):
    nll, hits, rows = [], 0, 0
    for b in range(B):
      for i in range(T):
        if i + k + 2 > T:
          continue
        rows += 1
        t = tokens[b, i + k + 2]
        lg = logits[b, i, k]
        logp = lg - np.log(np.exp(lg - lg.max()).sum()) - lg.max()
        if t in hot:
          e = int(np.where(hot == t)[0][0])
          nll.append(-logp[e])
          hits += int(np.argmax(lg) == e)
    ce = float(np.mean(nll)) if nll else 0.0
    np.testing.assert_allclose(float(metrics[f'head{k + 1}_ce']), ce, rtol=1e-5)
    np.testing.assert_allclose(float(metrics[f'head{k + 1}_acc']), hits / rows, rtol=1e-6)
    total, norm = total + 0.5 ** k * ce, norm + 0.5 ** k
  np.testing.assert_allclose(float(loss), total / norm, rtol=1e-5)
