"""H2O heavy-hitter eviction: a budget that holds the sequence is the full cache exactly; with
a small budget the kept set and the tokens equal a plain-numpy reference of the policy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testlib import jit_apply, small_config
from decoding import Models, SamplingConfig, h2o, registry, run_decoder
from models import Cache, Transformer, init_params

PAD = 0
PROMPTS = [[1, 5, 9, 3], [2, 7], [4, 4, 8, 1, 6, 2, 9, 11, 3, 5], [3]]


@pytest.fixture(scope='module')
def lm():
  cfg = small_config(vocab_size=48, num_layers=2, init_std=0.3)
  model = Transformer(cfg)
  return model, init_params(model, jax.random.key(7))


def _run(model, params, spec, prompts=PROMPTS, n=12, eos=-1, cache_size=32):
  name, settings = registry.parse_spec(spec)
  return run_decoder(registry.build(name, settings), Models(model), {'target': params}, prompts,
                     max_new_tokens=n, cache_size=cache_size, eos_id=eos, pad_id=PAD)


class Reference:
  """The policy in plain numpy, one row: kept token positions and their scores."""

  def __init__(self, budget, recent):
    self.budget, self.recent = budget, recent
    self.score = {}

  def prefill(self, mass_PxP):
    P = mass_PxP.shape[0]
    total = mass_PxP.sum(0)
    if P <= self.budget - 1:
      keep = list(range(P))
    else:
      recent = [p for p in range(P) if p > P - 1 - self.recent]
      others = sorted((p for p in range(P) if p not in recent), key=lambda p: -total[p])
      keep = recent + others[:self.budget - 1 - len(recent)]
    self.score = {p: float(total[p]) for p in keep}

  def step(self, newest, mass_by_pos):
    self.score[newest] = 0.0
    for p in self.score:
      self.score[p] += float(mass_by_pos[p])
    if len(self.score) == self.budget:
      old = [p for p in self.score if p <= newest - self.recent]
      del self.score[min(old, key=lambda p: self.score[p])]

  @property
  def kept(self):
    return sorted(self.score)


def test_budget_holding_the_sequence_equals_the_full_cache(lm):
  model, params = lm
  ar, _ = _run(model, params, 'ar')
  eos = ar[0].tokens[4]
  ar, _ = _run(model, params, 'ar', eos=eos)
  assert len({len(r.tokens) for r in ar}) > 1  # rows end at different times
  for spec in ('ar:h2o=32', 'ar:h2o=64:recent=4', 'ar:h2o=23:recent=2'):  # 23 = 10 + 12 + 1
    rows, _ = _run(model, params, spec, eos=eos)
    assert [r.tokens for r in rows] == [r.tokens for r in ar], spec
  # Logits bit for bit: teacher-forced through the policy and through the plain cache, call
  # for call (a 4-token prefill, then one token at a time).
  tokens = jnp.asarray([[3, 9, 4, 1, 7, 7, 2, 5, 8, 1, 4, 6]], jnp.int32)
  apply = jit_apply(model)
  plain = apply(params, tokens[:, :4], cache=Cache.init(model.cfg, 1, 16))
  policy = h2o.H2OPolicy(budget=16, recent=3)
  prefill = jax.jit(policy.prefill, static_argnums=(0, 4))
  logits, h = prefill(model, params, tokens[:, :4], jnp.asarray([4]), 16)
  np.testing.assert_array_equal(logits, plain.logits_BxTxV[:, 3])
  step = jax.jit(policy.forward, static_argnums=(0,))
  cache = plain.cache
  for t in range(4, 12):
    out, h = step(model, params, tokens[:, t:t + 1], jnp.asarray([[t]]), h)
    want = apply(params, tokens[:, t:t + 1], jnp.asarray([[t]]), cache=cache)
    cache = want.cache
    np.testing.assert_array_equal(out.logits_BxTxV, want.logits_BxTxV)


@pytest.mark.parametrize('budget,recent', [(5, 2), (4, 0), (6, 5)])
def test_kept_set_equals_the_numpy_policy_on_a_toy_attention_trace(budget, recent):
  rng = np.random.default_rng(budget * 10 + recent)
  B, P, steps = 3, [3, 8, 1], 14
  Pw = max(P)
  # Prefill: a random attention of each prompt query over the earlier prompt tokens.
  mass_BxPxP = np.zeros((B, Pw, Pw), np.float32)
  for b in range(B):
    for q in range(P[b]):
      mass_BxPxP[b, q, :q + 1] = rng.dirichlet(np.ones(q + 1))
  refs = [Reference(budget, recent) for _ in range(B)]
  for b in range(B):
    refs[b].prefill(mass_BxPxP[b, :P[b], :P[b]])
  # The JAX side of prefill: what `H2OPolicy.prefill` does after its full forward.
  positions = jnp.asarray([[p if p < P[b] else -1 for p in range(Pw)] for b in range(B)])
  full = Cache(layers=(), positions=positions.astype(jnp.int32),
               lengths=jnp.asarray(P, jnp.int32))
  scores_BxP = jnp.asarray(mass_BxPxP.sum(1))
  S = budget
  if Pw + 1 <= S:
    h = h2o.H2OCache(cache=Cache(layers=(), positions=jnp.pad(positions, [(0, 0), (0, S - Pw)],
                                                              constant_values=-1),
                                 lengths=full.lengths),
                     scores_BxS=jnp.pad(scores_BxP, [(0, 0), (0, S - Pw)]), free_B=full.lengths)
  else:
    keep_B = jnp.minimum(full.lengths, S - 1)
    recent_BxP = positions > (full.lengths - 1)[:, None] - recent
    prio = jnp.where(positions >= 0, jnp.where(recent_BxP, jnp.inf, scores_BxP), -jnp.inf)
    _, idx = jax.lax.top_k(prio, S - 1)
    ok = jnp.arange(S - 1)[None] < keep_B[:, None]
    h = h2o.H2OCache(cache=h2o.compact(full, idx, ok, S),
                     scores_BxS=jnp.pad(jnp.where(ok, jnp.take_along_axis(scores_BxP, idx, 1),
                                                  0.0), [(0, 0), (0, 1)]),
                     free_B=keep_B.astype(jnp.int32))

  def kept(h, b):
    pos = np.asarray(h.cache.positions[b]).copy()
    if int(h.cache.lengths[b]) == S:  # full: the free slot holds the evicted token until the
      pos[int(h.free_B[b])] = -1      # next write overwrites it; it is never attended to
    return sorted(int(p) for p in pos[pos >= 0])

  for b in range(B):
    assert kept(h, b) == refs[b].kept
  evicted_any = False
  for t in range(steps):
    newest = np.asarray(P) + t
    active = np.asarray([True, True, t < 9])  # row 2 finishes early
    # The "forward": write each active row's token at its free slot, then attend.
    b_idx = jnp.arange(B)
    pos = h.cache.positions.at[b_idx, h.free_B].set(
        jnp.where(active, newest, h.cache.positions[b_idx, h.free_B]))
    lengths = jnp.where(active, jnp.maximum(h.cache.lengths, h.free_B + 1), h.cache.lengths)
    cache = Cache(layers=(), positions=pos, lengths=lengths)
    mass_by_pos = np.zeros((B, int(newest.max()) + 1), np.float32)
    mass_BxS = np.zeros((B, S), np.float32)
    for b in range(B):
      held = [int(p) for p in np.asarray(pos[b]) if p >= 0]
      w = rng.dirichlet(np.ones(len(held)))
      for p, x in zip(held, w):
        mass_by_pos[b, p] = x
      for s in range(S):
        if int(pos[b, s]) >= 0:
          mass_BxS[b, s] = mass_by_pos[b, int(pos[b, s])]
      if active[b]:
        refs[b].step(int(newest[b]), mass_by_pos[b])
    h = h2o.after_step(h, cache, jnp.asarray(mass_BxS), jnp.asarray(newest),
                       jnp.asarray(active), recent)
    for b in range(B):
      assert kept(h, b) == refs[b].kept, (t, b)
    evicted_any = evicted_any or any(len(r.kept) == S - 1 for r in refs)
  assert evicted_any


def _masked_reference(model, params, prompt, n, budget, recent):
  """Greedy decoding with full no-cache forwards where query t sees only the tokens the numpy
  policy kept when t was processed (plus itself): what the evicting cache must compute."""
  apply = jit_apply(model)
  T = 32
  ref = Reference(budget, recent)
  seq = list(prompt)
  P = len(prompt)
  mask = np.zeros((1, T, T), bool)
  for q in range(P):
    mask[0, q, :q + 1] = True

  def forward():
    tokens = np.zeros((1, T), np.int32)
    tokens[0, :len(seq)] = seq
    out = apply(params, jnp.asarray(tokens), attn_mask=jnp.asarray(mask), return_attention=True)
    return np.asarray(out.logits_BxTxV[0]), np.asarray(out.attention_BxTxS[0])

  logits, mass = forward()
  ref.prefill(mass[:P, :P])
  seq.append(int(np.argmax(logits[P - 1])))
  kept_sets = [ref.kept]
  for _ in range(n - 1):
    q = len(seq) - 1
    mask[0, q, ref.kept + [q]] = True
    logits, mass = forward()
    ref.step(q, mass[q])
    kept_sets.append(ref.kept)
    seq.append(int(np.argmax(logits[q])))
  return seq[P:], kept_sets


@pytest.mark.parametrize('budget,recent', [(6, 2), (5, 0), (9, 3)])
def test_small_budget_decode_equals_the_masked_numpy_reference(lm, budget, recent):
  model, params = lm
  n = 12
  rows, _ = _run(model, params, f'ar:h2o={budget}:recent={recent}', n=n)
  full, _ = _run(model, params, 'ar', n=n)
  for r, prompt in zip(rows, PROMPTS):
    expected, kept = _masked_reference(model, params, prompt, n, budget, recent)
    assert r.tokens == expected, (prompt, kept[-1])
  assert [r.tokens for r in rows] != [r.tokens for r in full]  # eviction changes the output


def test_bad_settings_give_clear_errors(lm):
  model, params = lm
  with pytest.raises(ValueError, match=r'recent must be in \[0, budget - 1\] = \[0, 3\]'):
    _run(model, params, 'ar:h2o=4:recent=4')
  with pytest.raises(ValueError, match='at least 2 slots'):
    _run(model, params, 'ar:h2o=1')
  with pytest.raises(ValueError, match='recent is an H2O setting'):
    _run(model, params, 'ar:recent=3')


def test_an_evicting_ar_says_it_is_lossy_and_may_beat_ar_per_step():
  assert registry.build('ar').is_lossless() and not registry.build('ar').cheaper_steps()
  evicting = registry.build('ar', {'h2o': 8, 'recent': 2})
  assert not evicting.is_lossless() and evicting.cheaper_steps()
  skip = registry.build('skipdecode')
  assert not skip.is_lossless() and skip.cheaper_steps()


def test_a_prompt_alone_equals_the_prompt_in_a_batch(lm):
  """Eviction is decided per row, so a row's output does not depend on its batch."""
  model, params = lm
  dec = registry.build('ar', {'h2o': 6, 'recent': 2}, SamplingConfig(temperature=1.0))
  kw = dict(max_new_tokens=10, cache_size=32, eos_id=-1, pad_id=PAD, seed=5)
  batch, _ = run_decoder(dec, Models(model), {'target': params}, PROMPTS, **kw)
  for i in range(len(PROMPTS)):
    alone, _ = run_decoder(dec, Models(model), {'target': params}, PROMPTS[:i + 1],
                           batch_size=1, **kw)
    assert alone[i].tokens == batch[i].tokens
