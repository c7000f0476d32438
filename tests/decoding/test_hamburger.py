"""HAMburger: one-token steps are the base itself (embedder and decoder), the cached step decode
is the full forward over the same compressed sequence, the segmentation is consistent, the
loss of one-token steps is AR's, training lowers the loss, and misuse fails clearly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import testlib
from testlib import small_config
from decoding import Models, SamplingConfig, registry, run_decoder
from models import Transformer, init_params
from models import hamburger as ham_lib
from training.objectives import hamburger as ham_obj
from training.objectives import make_objective

PAD = 0
PROMPTS = [[1, 5, 9, 3], [2, 7], [4, 4, 8, 1, 6, 2, 9, 11, 3, 5], [3]]
K = 3


@pytest.fixture(scope='module')
def lm():
  """A random base and a HAMburger wrapper with random (non-zero) embedder and stop head, so
  nothing below holds by the zero initialisation."""
  cfg = small_config(vocab_size=48, num_layers=2, init_std=0.3)
  model = Transformer(cfg)
  params = init_params(model, jax.random.key(7))
  hb = ham_lib.init_params(cfg, params, K)
  k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
  hb['compose']['offsets'] = 0.3 * jax.random.normal(k1, hb['compose']['offsets'].shape)
  hb['micro']['stop_w'] = 2.0 * jax.random.normal(k2, hb['micro']['stop_w'].shape)
  hb['micro']['in_proj'] = hb['micro']['in_proj'] + 0.1 * jax.random.normal(
      k3, hb['micro']['in_proj'].shape)
  return model, params, hb


@pytest.fixture(scope='module')
def cross(lm):
  """The cross-attention embedder with random (non-zero) weights throughout."""
  model, params, _ = lm
  hb = ham_lib.init_params(model.cfg, params, K, embedder='cross_attention')
  keys = jax.random.split(jax.random.key(11), 5)
  for key, name in zip(keys, ('pos', 'wq', 'wk', 'wv', 'wo')):
    hb['compose'][name] = hb['compose'][name] + 0.3 * jax.random.normal(
        key, hb['compose'][name].shape)
  return hb


def _run(model, params, spec, prompts=PROMPTS, n=12, eos=-1, sampling=None):
  name, settings = registry.parse_spec(spec)
  return run_decoder(registry.build(name, settings, sampling or SamplingConfig()),
                     Models(model), params, prompts, max_new_tokens=n, cache_size=40,
                     eos_id=eos, pad_id=PAD)


def test_a_one_token_step_is_the_plain_embedding(lm):
  model, params, hb = lm
  tokens = jnp.asarray([[3, 9, 4], [1, 1, 7]])
  group = jnp.stack([tokens, jnp.full_like(tokens, 5), jnp.full_like(tokens, 11)], -1)
  one = ham_lib.compose(model.cfg, params, hb, group, jnp.ones_like(tokens))
  np.testing.assert_allclose(one, params['embed']['embedding'][tokens], atol=1e-6)
  two = ham_lib.compose(model.cfg, params, hb, group, jnp.full_like(tokens, 2))
  assert float(jnp.max(jnp.abs(two - params['embed']['embedding'][5]))) > 1e-2


@pytest.mark.parametrize('temperature', [0.0, 1.0])
def test_one_token_steps_are_ar_token_for_token(lm, temperature):
  """max_tokens=1: every step is one token, one entry at its own position: `ar` on the
  wrapped base, ragged prompts and rows ending at different EOS steps included."""
  model, params, hb = lm
  sampling = SamplingConfig(temperature=temperature)
  eos = -1
  if temperature == 0.0:
    eos, _ = testlib.ragged_ar_reference(Models(model), {'target': params}, PROMPTS,
                                         max_new_tokens=12, cache_size=40, pad_id=PAD)
  ar_rows, _ = _run(model, {'target': params}, 'ar', eos=eos, sampling=sampling)
  rows, stats = _run(model, {'target': params, 'hamburger': hb}, 'hamburger:max_tokens=1',
                     eos=eos, sampling=sampling)
  assert [r.tokens for r in rows] == [r.tokens for r in ar_rows]
  assert not stats.lossless


@pytest.mark.parametrize('embedder', ['linear', 'cross_attention'])
def test_cached_steps_equal_the_full_forward_over_the_compressed_sequence(lm, cross, embedder):
  """Decode greedily with steps of exactly K tokens (threshold 0), then run the training
  path (the objective's `steps`, `compose`, one uncached forward, the micro decoder) over
  prompt singletons + those steps: the base head and the micro decoder pick the same tokens.
  Rows are padded with one-token steps at the end (causal: they change nothing before)."""
  model, params, hb = lm
  if embedder == 'cross_attention':
    hb = dict(hb, compose=cross['compose'])
  rows, _ = _run(model, {'target': params, 'hamburger': hb}, 'hamburger:threshold=0.0', n=9)
  L = max(map(len, PROMPTS)) + 9
  seq, starts = np.zeros((len(PROMPTS), L), np.int32), np.ones((len(PROMPTS), L), bool)
  for r, (prompt, row) in enumerate(zip(PROMPTS, rows)):
    assert len(row.tokens) == 9
    seq[r, :len(prompt) + 9] = prompt + row.tokens
    starts[r, len(prompt):len(prompt) + 9] = (np.arange(9) % K) == 0

  @jax.jit
  def full(seq, starts):
    group, size, first, valid = ham_obj.steps(seq, starts, K)
    x = ham_lib.compose(model.cfg, params, hb, group, size)
    pos = jnp.where(valid, first + size - 1, -1)
    out = model.apply({'params': params}, None, pos, inputs_embeds_BxTxD=x, return_hidden=True)
    nxt = jnp.pad(group[:, 1:], ((0, 0), (0, 1), (0, 0)))
    micro, _ = ham_lib.micro_forward(model.cfg, params, hb, out.hidden[-1], nxt[..., :K - 1])
    return nxt, jnp.argmax(out.logits_BxTxV, -1), jnp.argmax(micro[..., 1:, :], -1)

  nxt, first_pick, micro_pick = jax.device_get(full(jnp.asarray(seq), jnp.asarray(starts)))
  for r, prompt in enumerate(PROMPTS):
    for j in range(len(prompt) - 1, len(prompt) + 2):  # the entries that predict the 3 steps
      assert first_pick[r, j] == nxt[r, j, 0]
      assert micro_pick[r, j].tolist() == nxt[r, j, 1:].tolist()


def test_stats_count_entries_and_steps(lm):
  model, params, hb = lm
  rows, stats = _run(model, {'target': params, 'hamburger': hb}, 'hamburger:threshold=0.0',
                     n=9)
  # 9 tokens in steps of 3: prefill + 2 base steps; the last step is never fed back.
  assert all(r.target_forwards == 3 for r in rows)
  assert stats.generated / stats.target_forwards == pytest.approx(3.0)
  assert stats.step_tokens_hist == [0, 0, 0, 3 * len(PROMPTS)]
  assert stats.extra['kv_entries'] == 2 * len(PROMPTS)


def test_segmentation_and_steps_are_consistent():
  conf = jnp.asarray([[0.0, 0.9, 0.9, 0.9, 0.2, 0.8, 0.1, 0.95]])
  starts = ham_obj.segment(conf, 3, 0.5)
  # t=0 starts; 1,2 join; 3 joins? no: the step is full (3 tokens); 4 < tau; 5 joins; 6 < tau
  assert starts.tolist() == [[True, False, False, True, True, False, True, False]]
  tokens = jnp.asarray([[10, 11, 12, 13, 14, 15, 16, 17]])
  group, size, first, valid = ham_obj.steps(tokens, starts, 3)
  assert size[0].tolist()[:4] == [3, 1, 2, 2] and int(valid.sum()) == 4
  assert first[0].tolist()[:4] == [0, 3, 4, 6]
  flat = [int(t) for j in range(4) for t in group[0, j, :int(size[0, j])]]
  assert flat == tokens[0].tolist()
  assert group[0, 1].tolist() == [13, 0, 0]
  rnd = jax.random.uniform(jax.random.key(0), (4, 50))
  for k in (1, 2, 4):
    s = ham_obj.segment(rnd, k, 0.4)
    _, sz, _, _ = ham_obj.steps(jnp.zeros((4, 50), jnp.int32), s, k)
    assert int(sz.max()) <= k and sz.sum(1).tolist() == [50] * 4
    assert bool(jnp.all(s[:, 0])) and bool(jnp.all(jnp.where(rnd < 0.4, s, True)))


def test_one_token_steps_score_what_ar_scores(lm):
  """All starts (every step one token): the loss is the AR next-token cross-entropy of the
  row (the micro decoder and stop head score nothing but the stop after token 1)."""
  model, params, hb = lm
  tokens = jax.random.randint(jax.random.key(2), (2, 11), 0, 48)
  losses = jax.jit(ham_obj.step_losses, static_argnums=(0, 5))
  ce1, w1, _, wm, _, ws, _, _ = losses(model, params, hb, tokens, jnp.ones(tokens.shape, bool), K)
  logp = jax.nn.log_softmax(model.apply({'params': params}, tokens[:, :-1]).logits_BxTxV)
  ar = -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1))
  np.testing.assert_allclose(jnp.sum(ce1 * w1) / jnp.sum(w1), ar, rtol=1e-5)
  assert float(jnp.sum(wm)) == 0 and float(jnp.sum(ws)) == 2 * 10


@pytest.mark.parametrize('embedder', ['linear', 'cross_attention'])
def test_training_lowers_the_loss(trained_workdir, embedder):
  import configs.hamburger  # pylint: disable=g-import-not-at-top
  from workdir import loading  # pylint: disable=g-import-not-at-top
  cfg = configs.hamburger.get_config('test')
  cfg.hamburger.target_workdir = trained_workdir
  cfg.hamburger.embedder = embedder
  base = loading.load_model(trained_workdir)
  objective = make_objective('hamburger', base.model, cfg)
  extras = objective.extras(jax.random.key(0))
  extras, losses, metrics = testlib.train_extras(
      objective, base.params, extras, testlib.code_batch(base.tokenizer, 7), steps=10,
      learning_rate=1e-2)
  assert np.isfinite(losses).all()
  # The base (frozen here) scores every step's first token: only the rest can improve.
  assert losses[-1] < losses[0] - 0.2, losses
  assert set(extras) == {'hamburger'} and ham_lib.max_tokens(extras['hamburger']) == 4
  assert ham_lib.embedder_kind(extras['hamburger']) == embedder
  assert 1.0 <= float(metrics['tokens_per_step']) <= 4.0


def test_clear_errors(lm):
  model, params, hb = lm
  with pytest.raises(ValueError, match='needs the embedder and micro decoder'):
    _run(model, {'target': params}, 'hamburger')
  with pytest.raises(ValueError, match='at most 3 tokens'):
    _run(model, {'target': params, 'hamburger': hb}, 'hamburger:max_tokens=4')
  with pytest.raises(ValueError, match='threshold'):
    registry.build('hamburger', {'threshold': 1.5})
  with pytest.raises(ValueError, match='max_tokens'):
    registry.build('hamburger', {'max_tokens': -1})
  from models.kind import ModelKind  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match='configs/hamburger.py'):
    registry.build('hamburger').for_model({'target': ModelKind()})
  with pytest.raises(ValueError, match='2 .. 16'):
    ham_lib.init_params(model.cfg, params, 1)
  with pytest.raises(ValueError, match='recurrent'):
    ham_lib.check_model(small_config(num_layers=2, layer_types=('attention', 'deltaproduct')),
                        2)
  with pytest.raises(ValueError, match='tau'):
    ham_obj.segment(jnp.zeros((1, 4)), 2, 0.0)
  import configs.hamburger  # pylint: disable=g-import-not-at-top
  cfg = configs.hamburger.get_config('test')
  with pytest.raises(ValueError, match='target_workdir'):
    make_objective('hamburger', model, cfg)
  cfg.hamburger.embedder = 'mlp'
  with pytest.raises(ValueError, match='hamburger.embedder must be one of'):
    make_objective('hamburger', model, cfg)
  with pytest.raises(ValueError, match='configs/hamburger.py'):
    make_objective('hamburger', model, None)


def test_batched_rows_equal_rows_alone(lm):
  """Steps of different lengths per row (random stop head): a ragged batch gives each row what
  it gives alone (the micro passes skipped once no row continues change nothing)."""
  model, params, hb = lm
  hparams = {'target': params, 'hamburger': hb}
  rows, stats = _run(model, hparams, 'hamburger:threshold=0.5', prompts=PROMPTS[:3], n=10)
  hist = stats.step_tokens_hist
  assert sum(h > 0 for h in hist[1:]) >= 2, hist  # steps of several lengths happened
  for prompt, row in list(zip(PROMPTS[:3], rows))[::2]:
    alone, _ = _run(model, hparams, 'hamburger:threshold=0.5', prompts=[prompt], n=10)
    assert alone[0].tokens == row.tokens


def test_cross_attention_embedder(lm, cross):
  """One-token steps are the plain embedding; a longer step reads exactly its own tokens, in
  order (position embeddings), and is neither its last token's embedding nor their mean."""
  model, params, _ = lm
  cfg, E = model.cfg, params['embed']['embedding']
  assert ham_lib.embedder_kind(cross) == 'cross_attention' and ham_lib.max_tokens(cross) == K
  group = jnp.asarray([[[3, 9, 4], [1, 7, 7]], [[5, 2, 8], [6, 6, 1]]])  # [B, M, K]
  comp = jax.jit(lambda g, c: ham_lib.compose(cfg, params, cross, g, c))
  one = comp(group, jnp.ones((2, 2), jnp.int32))
  np.testing.assert_allclose(one, E[group[..., 0]], atol=1e-6)
  two = comp(group, jnp.full((2, 2), 2, jnp.int32))
  assert two.shape == (2, 2, cfg.d_model)
  assert float(jnp.min(jnp.abs(two - E[group[..., 1]]).max(-1))) > 1e-2
  assert float(jnp.min(jnp.abs(two - E[group[..., :2]].mean(-2)).max(-1))) > 1e-2
  # the column beyond the step's count is never read ...
  np.testing.assert_allclose(comp(group.at[..., 2].set(0), jnp.full((2, 2), 2, jnp.int32)),
                             two, atol=1e-6)
  # ... and the order of the step's tokens matters
  swapped = comp(group[..., jnp.asarray([1, 0, 2])], jnp.full((2, 2), 2, jnp.int32))
  assert float(jnp.max(jnp.abs(swapped - two))) > 1e-3
  # at initialisation a longer step is the mean of its embeddings
  init = ham_lib.init_params(cfg, params, K, embedder='cross_attention')
  np.testing.assert_allclose(
      ham_lib.compose(cfg, params, init, group, jnp.full((2, 2), 3, jnp.int32)),
      E[group].mean(-2), atol=1e-5)
  with pytest.raises(ValueError, match='embedder must be one of'):
    ham_lib.init_params(cfg, params, K, embedder='mlp')


def test_cross_attention_one_token_steps_are_ar(lm, cross):
  model, params, _ = lm
  ar_rows, _ = _run(model, {'target': params}, 'ar')
  rows, _ = _run(model, {'target': params, 'hamburger': cross}, 'hamburger:max_tokens=1')
  assert [r.tokens for r in rows] == [r.tokens for r in ar_rows]
