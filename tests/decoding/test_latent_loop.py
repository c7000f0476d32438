"""The latent decode loop: discrete == AR, one-hot mixture == discrete, one compile for every
mode, and the controllers (Cold Stop, SwiReasoning, fixed thoughts) on scripted logits."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testlib import small_config
from decoding import Models, SamplingConfig, registry, run_decoder
from decoding.latent import controllers, feedback, loop
from models import Cache, Transformer, init_params

V, PAD, EOS = 48, 0, 47
AR_EOS = {'greedy': 13, 'sampled': 30}  # tokens these rows emit at different times
IDS = dict(think_start_id=40, think_end_id=41, latent_id=42, pause_id=43)
PROMPTS = [[1, 5, 9, 3, 40], [2, 7, 40], [4, 4, 8, 1, 6, 2, 9, 40], [3, 40]]
SAMPLING = {'greedy': SamplingConfig(), 'sampled': SamplingConfig(temperature=1.0, top_k=20)}


def _settings_for(sampling):
  # Concept temperature 0: one-hot concept tokens (and one-hot supports for the noisy modes).
  return loop.LoopSettings(
      sampling=sampling, concept=feedback.ConceptConfig(temperature=0.0, noise_scale=0.5),
      control=controllers.ControlConfig(think_end_id=41, latent_steps=3),
      think_start_id=40, latent_id=42, pause_id=43)


_INIT = jax.jit(lambda k: init_params(Transformer(small_config(vocab_size=V, init_std=0.3)), k))


@functools.lru_cache(maxsize=None)
def shared_lm(seed: int = 7):
  """A small LM shared by the latent decoding tests (test_latent_cntp / _routing import it):
  one init compile, and the same module object, so AR compiles are shared too."""
  return _MODEL, _INIT(jax.random.key(seed))


_MODEL = Transformer(small_config(vocab_size=V))


@pytest.fixture(scope='module')
def lm():
  return shared_lm()


@functools.partial(jax.jit, static_argnames=('model', 'settings', 'eos'))
def _loop(model, params, prompt_BxP, prompt_len_B, keys_B, modes_B, settings, eos):
  cache = Cache.init(model.cfg, prompt_BxP.shape[0], 32)
  first = loop.prefill_first(model, params, prompt_BxP, prompt_len_B, cache)
  return loop.run_loop(loop.model_forward(model, params), params['embed']['embedding'], first,
                       prompt_len_B, keys_B, modes_B, settings, max_new_tokens=10, eos_id=eos,
                       pad_id=PAD)


def _run_loop(lm, kind, modes):
  """The loop on PROMPTS with run_decoder's row keys (seed 1); modes: names per row."""
  model, params = lm
  prompt = np.zeros((4, 8), np.int32)
  for i, p in enumerate(PROMPTS):
    prompt[i, :len(p)] = p
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(1), i))(jnp.arange(4))
  modes_B = jnp.asarray([feedback.mode_id(m) for m in modes], jnp.int32)
  s = _loop(model, params, jnp.asarray(prompt), jnp.asarray(list(map(len, PROMPTS)), jnp.int32),
            keys, modes_B, _settings_for(SAMPLING[kind]), AR_EOS[kind])
  s = jax.device_get(s)
  return [s.progress.tokens_BxN[b, :s.progress.num_generated_B[b]].tolist() for b in range(4)], s


@functools.lru_cache(maxsize=None)
def ar_rows(kind: str, seed: int = 7):
  """The AR decoder on PROMPTS (row keys of seed 1) with the shared LM of `seed`."""
  model, params = shared_lm(seed)
  rows, _ = run_decoder(registry.build('ar', sampling=SAMPLING[kind]), Models(model),
                        {'target': params}, PROMPTS, max_new_tokens=10, cache_size=32,
                        eos_id=AR_EOS[kind], pad_id=PAD, seed=1)
  return rows


def _ar_rows(lm, kind):
  del lm
  return ar_rows(kind)


@pytest.mark.parametrize('kind', ['greedy', 'sampled'])
def test_discrete_mode_equals_ar_token_for_token(lm, kind):
  ar = _ar_rows(lm, kind)
  assert len({len(r.tokens) for r in ar}) > 1, 'rows should end at different times'
  tokens, s = _run_loop(lm, kind, ['discrete'] * 4)
  assert tokens == [r.tokens for r in ar]
  assert s.progress.target_forwards_B.tolist() == [r.target_forwards for r in ar]
  assert (s.modes_BxN[s.modes_BxN >= 0] == feedback.DISCRETE).all()


def test_one_hot_mixture_equals_discrete(lm):
  """Concept tokens at temperature 0 are one-hot: sum_k p_k E[k] = E[argmax] exactly."""
  tokens, s = _run_loop(lm, 'greedy', ['concept'] * 4)
  assert tokens == [r.tokens for r in _ar_rows(lm, 'greedy')]
  assert (s.modes_BxN[:, 0] == feedback.CONCEPT).all()


def test_one_compile_serves_every_mode_and_rows_are_independent(lm):
  modes = ['discrete', 'concept', 'full', 'hidden', 'gumbel', 'dirichlet', 'pause']
  mixed = ['full', 'hidden', 'pause', 'gumbel']
  out_mixed, s_mixed = _run_loop(lm, 'greedy', mixed)
  alone = {m: _run_loop(lm, 'greedy', [m] * 4)[0] for m in modes}
  assert _loop._cache_size() <= 2, 'one compile per sampling config serves every mode'
  for row, m in enumerate(mixed):
    assert out_mixed[row] == alone[m][row]
  for m in ('hidden', 'pause'):  # fixed thoughts: 3 latents, then </think>
    for toks in alone[m]:
      assert toks[:4] == [42 if m == 'hidden' else 43] * 3 + [41]
  ar = [r.tokens for r in _ar_rows(lm, 'greedy')]
  for m in ('concept', 'gumbel', 'dirichlet'):  # one-hot supports: no noise to add
    assert alone[m] == ar
  for m in ('full', 'hidden', 'pause'):
    assert alone[m] != ar, f'{m} feeds back something else'


def test_registered_decoder_appends_think_and_reports_statistics(lm):
  """The `coconut` decoder on prompts without their trailing <think> (append_ids adds it)
  equals the loop on the full prompts, and reports its latent statistics."""
  model, params = lm
  dec = registry.build('coconut', {**IDS, 'latent_steps': 3, 'append_ids': (40,)})
  rows, stats = run_decoder(dec, Models(model), {'target': params}, [p[:-1] for p in PROMPTS],
                            max_new_tokens=10, cache_size=32, eos_id=AR_EOS['greedy'],
                            pad_id=PAD, seed=1)
  assert [r.tokens for r in rows] == _run_loop(lm, 'greedy', ['hidden'] * 4)[0]
  for r in rows:
    assert r.tokens[:4] == [42, 42, 42, 41]
    assert r.extra['latent_steps'] == 3 and r.extra['think_tokens'] == 4
    assert r.target_forwards == len(r.tokens)
  assert stats.extra['latent_steps'] == 12 and stats.tau == 1.0


# ----------------------------------------------------------------- scripted logits
def _logits(tokens_BxT, sharpness_BxT, vocab=V):
  """Logits c * onehot(token): entropy falls as c grows (c = 0: uniform)."""
  return jnp.asarray(sharpness_BxT)[..., None] * jax.nn.one_hot(jnp.asarray(tokens_BxT), vocab)


def _scripted(table_BxTxV, hidden_BxTxD, prompt_len_B):
  """A fake model: the output at position pos is row b's script entry pos - prompt_len + 1;
  the 'cache' logs each input x at its position (to check what was fed back)."""
  T = table_BxTxV.shape[1]

  def forward(x_BxD, pos_B, log_BxSxD):
    idx_B = jnp.clip(pos_B - prompt_len_B + 1, 0, T - 1)
    b = jnp.arange(x_BxD.shape[0])
    log_BxSxD = log_BxSxD.at[b, jnp.where(pos_B < 0, log_BxSxD.shape[1], pos_B)].set(
        x_BxD, mode='drop')
    return table_BxTxV[b, idx_B], hidden_BxTxD[b, idx_B], log_BxSxD
  return forward


@functools.partial(jax.jit, static_argnames=('settings',))
def _run_scripted(table_BxTxV, hidden_BxTxD, embed_VxD, modes_B, settings):
  B, T, _ = table_BxTxV.shape
  prompt_len_B = jnp.full((B,), 2, jnp.int32)
  first = (table_BxTxV[:, 0], hidden_BxTxD[:, 0], jnp.zeros((B, T + 2, embed_VxD.shape[1])))
  return loop.run_loop(_scripted(table_BxTxV, hidden_BxTxD, prompt_len_B), embed_VxD, first,
                       prompt_len_B, jax.random.split(jax.random.key(0), B), modes_B,
                       settings, max_new_tokens=T, eos_id=EOS, pad_id=PAD)


EMBED = jax.random.normal(jax.random.key(3), (V, 8))
HIDDEN = jax.random.normal(jax.random.key(4), (1, 12, 8))


def _settings(**control):
  return loop.LoopSettings(control=controllers.ControlConfig(think_end_id=41, **control),
                           think_start_id=40, latent_id=42, pause_id=43)


def _swi_reference(H, read, window, max_switches, end=41):
  """SwiReasoning's rules written out plainly: 'L' latent input, 'D' explicit input."""
  latent, ref, stay, switches, thinking, out, events = True, H[0], 0, 0, True, [], []
  for t, h in enumerate(H):
    if not thinking:
      out.append('D')
      continue
    to_exp = to_lat = False
    if t > 0:
      stay += 1
      to_exp = bool(latent and h < ref)
      to_lat = bool((not latent) and h > ref and stay >= window)
      if to_exp or to_lat:
        stay, ref = 0, h
      switches += to_exp
      latent = (latent and not to_exp) or to_lat
    capped = to_exp and max_switches and switches >= max_switches
    if read[t] == end or capped:
      thinking = False
      out.append('D')
      events.append((t, 'close'))
      continue
    events += [(t, 'to_explicit')] * to_exp + [(t, 'to_latent')] * to_lat
    out.append('L' if latent else 'D')
  return out, events


@pytest.mark.parametrize('window,max_switches', [(1, 2)])
def test_swireasoning_switch_positions_follow_the_rules(window, max_switches):
  T = 12
  toks = np.random.default_rng(0).integers(1, 30, size=(1, T))
  sharp = np.array([[2, 3, 2.5, 1, 0.5, 0.6, 4, 5, 1, 0.5, 6, 0.5]])  # entropy falls as c grows
  table = _logits(toks, sharp)
  s = _run_scripted(table, HIDDEN, EMBED, jnp.asarray([feedback.FULL]),
                    _settings(swi=True, swi_window=window, swi_max_switches=max_switches))
  H = np.asarray(feedback.entropy(table[0]))
  expected, events = _swi_reference(H, toks[0], window, max_switches)
  modes = ['L' if m == feedback.FULL else 'D' for m in np.asarray(s.modes_BxN[0])]
  assert modes == expected
  assert any(e == 'to_explicit' for _, e in events) and any(e == 'to_latent' for _, e in events)
  # Inputs at switches are blended with E[</think>] (beta) / E[<think>] (alpha).
  x = np.asarray(s.cache[0])
  soft = np.asarray(jax.nn.softmax(table[0], -1) @ EMBED)
  for t, e in events:
    if t == T - 1:
      continue  # the last decided input is never fed
    if e == 'to_explicit':
      beta = 0.7 + 0.3 * t / T
      np.testing.assert_allclose(x[2 + t], beta * soft[t] + (1 - beta) * EMBED[41], atol=1e-5)
    elif e == 'to_latent':
      np.testing.assert_allclose(x[2 + t], soft[t], atol=1e-5)  # alpha0 = 1
  if max_switches:
    closes = [t for t, e in events if e == 'close']
    assert closes and s.progress.tokens_BxN[0, closes[0]] == 41


@pytest.fixture(scope='module')
def scripted_rows():
  """Three rows, one compile: Cold Stop (concept), fixed thoughts (hidden), natural close."""
  toks = np.array([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
                   [41, 41, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],   # </think> read early
                   [5, 6, 41, 8, 9, EOS, 11, 12, 13, 14, 15, 16]])
  sharp = np.array([[30., 30, 1, 30, 30, 30, 30, 1, 30, 30, 30, 30],  # H < 0.01 at 30
                    [5.] * 12, [2.] * 12])
  table = _logits(toks, sharp)
  hidden = jnp.tile(HIDDEN, (3, 1, 1))
  s = _run_scripted(table, hidden, EMBED,
                    jnp.asarray([feedback.CONCEPT, feedback.HIDDEN, feedback.CONCEPT]),
                    _settings(cold_stop_patience=3, cold_stop_threshold=0.01, latent_steps=4))
  return toks, table, jax.device_get(s)


def test_cold_stop_fires_after_patience_consecutive_confident_steps(scripted_rows):
  toks, table, s = scripted_rows
  tokens, modes = s.progress.tokens_BxN[0], s.modes_BxN[0]
  # Runs of low entropy: steps 0-1 (2, reset at 2), 3-6: the third (step 5) forces </think>.
  assert tokens[:5].tolist() == toks[0, :5].tolist() and tokens[5] == 41
  assert (modes[:5] == feedback.CONCEPT).all() and (modes[5:] == feedback.DISCRETE).all()
  assert tokens[6:].tolist() == toks[0, 6:].tolist()
  assert s.ctrl.cold_stopped.tolist() == [True, False, False]
  # The inputs: concept mixtures while thinking, then E[token] (x at position 2 + g).
  x = s.cache[0]
  w, ids = jax.jit(feedback.concept_weights, static_argnums=1)(table[0, :5],
                                                               feedback.ConceptConfig())
  np.testing.assert_allclose(x[2:7], feedback.mix(w, ids, EMBED), atol=1e-6)
  np.testing.assert_allclose(x[7:13], EMBED[tokens[5:11]], atol=1e-6)


def test_fixed_thoughts_feed_hidden_states_and_ignore_early_close(scripted_rows):
  toks, _, s = scripted_rows
  tokens = s.progress.tokens_BxN[1]
  assert tokens[:4].tolist() == [42] * 4 and tokens[4] == 41
  assert tokens[5:].tolist() == toks[1, 5:].tolist()
  x = s.cache[1]
  np.testing.assert_allclose(x[2:6], HIDDEN[0, :4], atol=1e-6)  # thought g = hidden at g - 1
  np.testing.assert_allclose(x[6], EMBED[41], atol=1e-6)


def test_mixture_rows_close_when_the_read_token_is_end_of_thinking(scripted_rows):
  _, _, s = scripted_rows
  modes = s.modes_BxN[2]
  assert (modes[:2] == feedback.CONCEPT).all() and (modes[2:6] == feedback.DISCRETE).all()
  assert int(s.progress.num_generated_B[2]) == 6  # EOS at an explicit position ends the row


# ----------------------------------------------------------------- feedback units
def _soft_thinking_reference(logits, T=0.6, top_k=30, top_p=0.95, min_p=0.0, max_k=15):
  """Soft Thinking's sampler in numpy: each filter, then renormalise."""
  p = np.exp((logits - logits.max()) / T)
  p /= p.sum()
  keep = np.argsort(-p)[:top_k]
  q = np.zeros_like(p)
  q[keep] = p[keep]
  q /= q.sum()
  order = np.argsort(-q)
  before = np.cumsum(q[order]) - q[order]
  r = np.zeros_like(q)
  r[order[before < top_p]] = q[order[before < top_p]]
  r /= r.sum()
  r[r < min_p * r.max()] = 0
  r /= r.sum()
  out = np.zeros_like(r)
  top = np.argsort(-r)[:max_k]
  out[top] = r[top]
  return out / out.sum()


@pytest.mark.parametrize('cfg', [feedback.ConceptConfig(),
                                 feedback.ConceptConfig(1.0, 5, 0.8, 0.05, 3),
                                 feedback.ConceptConfig(0.3, 0, 1.0, 0.0, 20)])
def test_concept_weights_match_soft_thinkings_sampler(cfg):
  logits = jax.random.normal(jax.random.key(1), (6, V)) * 2.5
  w, ids = jax.jit(feedback.concept_weights, static_argnums=1)(logits, cfg)
  dense = np.zeros((6, V))
  np.put_along_axis(dense, np.asarray(ids), np.asarray(w), axis=1)
  for b in range(6):
    ref = _soft_thinking_reference(np.asarray(logits[b], np.float64), cfg.temperature,
                                   cfg.top_k or V, cfg.top_p, cfg.min_p, cfg.max_k)
    np.testing.assert_allclose(dense[b], ref, atol=1e-5)
  assert (np.count_nonzero(dense, axis=1) <= cfg.max_k).all()


@functools.partial(jax.jit, static_argnums=(4,))
def _feedback_all(logits, hidden, keys, w, cfg):
  modes = jnp.asarray([feedback.CONCEPT, feedback.FULL, feedback.HIDDEN, feedback.PAUSE,
                       feedback.DISCRETE, feedback.GUMBEL, feedback.DIRICHLET])
  x = feedback.latent_embeds(modes, logits, hidden, EMBED, keys, cfg, 43)
  return x, feedback.gumbel_weights(w, keys, 1.0), feedback.dirichlet_weights(w, keys, 2.0)


def test_feedback_modes_one_hot_full_and_noisy():
  logits = jax.random.normal(jax.random.key(2), (7, V)) * 3
  hidden = jax.random.normal(jax.random.key(5), (7, 8))
  keys = jax.random.split(jax.random.key(6), 7)
  w, _ = jax.jit(feedback.concept_weights, static_argnums=1)(logits, feedback.ConceptConfig())
  x, gumbel, dirichlet = _feedback_all(logits, hidden, keys, w,
                                       feedback.ConceptConfig(temperature=0.0))
  top = EMBED[jnp.argmax(logits, -1)]
  for row in (0, 4, 5, 6):  # one-hot concept (and its noisy variants): exactly E[argmax]
    np.testing.assert_array_equal(x[row], top[row])
  np.testing.assert_allclose(x[1], jax.nn.softmax(logits[1]) @ EMBED, atol=1e-6)
  np.testing.assert_array_equal(x[2], hidden[2])
  np.testing.assert_array_equal(x[3], EMBED[43])
  for noisy in (gumbel, dirichlet):
    np.testing.assert_allclose(noisy.sum(-1), 1.0, atol=1e-5)
    assert ((np.asarray(noisy) > 0) <= (np.asarray(w) > 0)).all()  # support kept
    assert not np.allclose(noisy, w)
  H = feedback.entropy(jnp.zeros((1, V)))
  np.testing.assert_allclose(H, np.log(V), rtol=1e-6)


def test_bad_settings_give_clear_errors():
  with pytest.raises(ValueError, match='Unknown feedback mode'):
    registry.build('latent', {'mode': 'telepathy'})
  with pytest.raises(ValueError, match='latent_steps > 0'):
    registry.build('latent', {'mode': 'hidden'})
  with pytest.raises(ValueError, match='max_k'):
    registry.build('soft_thinking', {'concept_max_k': 0})
