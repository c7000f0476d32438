"""BitLM: the bit code, the invalid-code rule, the decoder against an uncached reference
(ragged batch; masked and analog heads), its degenerate one-step setting against the head's
greedy per-token choice, the analog sampler against a hand-written DDIM loop, both objectives
against hand-computed values, and clear errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testlib import small_config
from decoding import Models, SamplingConfig, registry, run_decoder
from decoding.diffusion import bitlm as decoder_lib
from models import Transformer, init_params
from models import bitlm as bitlm_lib
from models.kind import ModelKind
from training.objectives import bitlm as objective_lib
from training.objectives import make_objective

V = 40  # 6 bits: codes 40 .. 63 are invalid
PAD = 0
PROMPTS = [[1, 5, 9, 3], [2, 7], [4, 4, 8, 1, 6, 2, 9, 11, 3, 5], [3]]


def _lm(block, seed=0, kind='masked', fold=False):
  cfg = small_config(vocab_size=V, init_std=0.3)
  model = Transformer(cfg)
  shape = bitlm_lib.HeadShape(block=block, bits=bitlm_lib.num_bits(V), width=16, layers=1,
                              heads=2, mlp=32, cond=cfg.d_model, kind=kind, fold=fold)
  head = bitlm_lib.init_head(shape, jax.random.key(seed + 1))
  head = {**head, 'out': head['out'] * 6.0}  # peaked, varied confidences
  return model, {'target': init_params(model, jax.random.key(seed)), 'bitlm': head}


def _run(model, params, spec, prompts=PROMPTS, n=9, sampling=None, eos=-1, batch_size=None):
  name, settings = registry.parse_spec(spec)
  return run_decoder(registry.build(name, settings, sampling), Models(model), params, prompts,
                     max_new_tokens=n, cache_size=40, eos_id=eos, pad_id=PAD,
                     batch_size=batch_size)


def _uncached(model, params, prompt, n, steps, row=0):
  """The decoder's loop without a cache: the full backbone over prompt + tokens so far (right
  padded to a fixed width: causal, so the padding changes nothing before it), the head on the
  newest token's hidden state, K tokens appended, until n tokens. Block keys as the decoder
  documents them (row key fold_in(key(0), row), then the salt and the tokens so far; only the
  analog head reads them at temperature 0)."""
  @jax.jit
  def block(x_1xT, i, key):
    h = model.apply({'params': params['target']}, x_1xT).last_hidden_BxTxD[:, i]
    return bitlm_lib.denoise_block(params['bitlm'], h, steps, V, keys_B=key[None])[0][0]

  row_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), row), decoder_lib._SALT)
  out = list(prompt)
  while len(out) - len(prompt) < n:
    key = jax.random.fold_in(row_key, len(out) - len(prompt))
    out += [int(t) for t in block(jnp.asarray([out + [PAD] * (32 - len(out))]), len(out) - 1,
                                  key)]
  return out[len(prompt):len(prompt) + n]


def _np_fold(params, seq, K):
  """The folded backbone's inputs [n, D] of a token list, written out: left-padded with
  (-len) mod K pad slots, cut into blocks of K, block j = sum_k e_k @ F_k (e_k the embedding
  row of slot k's token, or fold_pad at a pad slot)."""
  E = np.asarray(params['target']['embed']['embedding'], np.float64)
  F = np.asarray(params['bitlm']['fold'], np.float64)
  pad = np.asarray(params['bitlm']['fold_pad'], np.float64)
  slots = [None] * ((-len(seq)) % K) + list(seq)
  rows = []
  for j in range(len(slots) // K):
    rows.append(sum((pad if t is None else E[t]) @ F[k]
                    for k, t in enumerate(slots[j * K:(j + 1) * K])))
  return np.stack(rows)


def _uncached_folded(model, params, prompt, n, steps, row=0):
  """`_uncached` for a folded head: the full backbone over the folded blocks of prompt +
  tokens so far (aligned to the end, `_np_fold`), the head on the last block's state."""
  K = params['bitlm']['fold'].shape[0]

  @jax.jit
  def block(x_1xNxD, i, key):
    pos = jnp.arange(x_1xNxD.shape[1])[None]
    h = model.apply({'params': params['target']}, None, pos,
                    inputs_embeds_BxTxD=x_1xNxD).last_hidden_BxTxD[:, i]
    return bitlm_lib.denoise_block(params['bitlm'], h, steps, V, keys_B=key[None])[0][0]

  row_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), row), decoder_lib._SALT)
  out = list(prompt)
  while len(out) - len(prompt) < n:
    x = _np_fold(params, out, K)
    key = jax.random.fold_in(row_key, len(out) - len(prompt))
    x_pad = np.zeros((1, 16, x.shape[1]), np.float32)  # causal: the padding changes nothing
    x_pad[0, :len(x)] = x
    out += [int(t) for t in block(jnp.asarray(x_pad), len(x) - 1, key)]
  return out[len(prompt):len(prompt) + n]


def test_the_bit_code_round_trips_every_id_and_marks_invalid_codes():
  for vocab in (2, 40, 259, 32768):
    nb = bitlm_lib.num_bits(vocab)
    assert 2 ** (nb - 1) < vocab <= 2 ** nb
    ids = jnp.arange(vocab)
    bits = bitlm_lib.encode_bits(ids, nb)
    assert bits.shape == (vocab, nb) and set(np.unique(bits)) <= {0, 1}
    np.testing.assert_array_equal(bitlm_lib.decode_bits(bits), ids)
  assert bitlm_lib.encode_bits(jnp.asarray(6), 4).tolist() == [0, 1, 1, 0]  # MSB first
  # The rule for codes >= V: the valid id with the best independent-bit score (brute force).
  logits = jax.random.normal(jax.random.key(0), (50, 6)) * 3
  raw = bitlm_lib.decode_bits((logits > 0).astype(jnp.int32))
  got = bitlm_lib.valid_ids(raw, logits, V)
  codes = np.asarray(bitlm_lib.encode_bits(jnp.arange(V), 6))
  for r, l, g in zip(np.asarray(raw), np.asarray(logits, np.float64), np.asarray(got)):
    score = [np.sum(np.where(c == 1, -np.log1p(np.exp(-l)), -np.log1p(np.exp(l))))
             for c in codes]
    assert g == (r if r < V else int(np.argmax(score)))
  assert (np.asarray(raw) >= V).any() and (np.asarray(got) < V).all()


@pytest.mark.parametrize('block, steps, kind', [(3, 4, 'masked'), (1, 6, 'masked'),
                                               (3, 4, 'analog'), (2, 60, 'analog')])
def test_cached_block_decoding_equals_the_uncached_reference_in_a_ragged_batch(block, steps,
                                                                                 kind):
  model, params = _lm(block, kind=kind)
  rows, stats = _run(model, params, f'bitlm:steps={steps}')
  for i, (prompt, row) in enumerate(zip(PROMPTS, rows)):
    assert row.tokens == _uncached(model, params, prompt, 9, steps, row=i)
  assert not stats.lossless
  r = rows[0]
  assert r.target_forwards == math.ceil(9 / block)  # prefill + one per block but the last
  assert r.other_forwards == steps * math.ceil(9 / block)


@pytest.mark.parametrize('block, steps, kind', [(3, 4, 'masked'), (4, 2, 'masked'),
                                               (2, 5, 'analog')])
def test_folded_decoding_equals_the_uncached_reference_in_a_ragged_batch(block, steps, kind):
  """One backbone position per block: the cache holds ceil(cache_size / K) + 1 slots, so a
  decoder writing one entry per token would lose entries and differ from the reference."""
  model, params = _lm(block, seed=4, kind=kind, fold=True)
  assert bitlm_lib.head_shape(params['bitlm']).fold
  rows, _ = _run(model, params, f'bitlm:steps={steps}')
  for i, (prompt, row) in enumerate(zip(PROMPTS, rows)):
    assert row.tokens == _uncached_folded(model, params, prompt, 9, steps, row=i)
  assert rows[0].target_forwards == math.ceil(9 / block)
  # The unfolded head on the same backbone decodes something else (the fold is read).
  unfolded = {**params, 'bitlm': {k: v for k, v in params['bitlm'].items()
                                  if k not in ('fold', 'fold_pad')}}
  other, _ = _run(model, unfolded, f'bitlm:steps={steps}')
  assert [r.tokens for r in other] != [r.tokens for r in rows]


def test_prompt_blocks_align_each_prompt_to_its_end():
  width = max(map(len, PROMPTS))
  prompt = jnp.asarray([p + [PAD] * (width - len(p)) for p in PROMPTS])
  lens = jnp.asarray([len(p) for p in PROMPTS])
  for K in (1, 3, 4):
    ids, valid, n = map(np.asarray, bitlm_lib.prompt_blocks(prompt, lens, K))
    assert ids.shape == valid.shape == (4, -(-width // K), K)
    for b, p in enumerate(PROMPTS):
      slots = [None] * ((-len(p)) % K) + p
      assert n[b] == len(slots) // K
      for j in range(ids.shape[1]):
        want = slots[j * K:(j + 1) * K] if j < n[b] else [None] * K
        assert [int(t) if v else None for t, v in zip(ids[b, j], valid[b, j])] == want


def test_one_denoising_step_is_the_heads_greedy_per_token_choice():
  """K = 1, steps = 1: each token is argmax over the valid ids of the head's own one-step
  distribution, prod_j P(bit_j | all masked), read from the full (uncached) forward."""
  model, params = _lm(1, seed=3)
  params['bitlm'] = {**params['bitlm'], 'out_bias': params['bitlm']['out_bias'].at[0].set(4.0)}
  rows, _ = _run(model, params, 'bitlm:steps=1', n=7)
  codes = bitlm_lib.encode_bits(jnp.arange(V), 6).astype(jnp.float32)

  @jax.jit
  def greedy_choice(x_1xT, i):  # (argmax_v score(v), the raw per-bit argmax code)
    h = model.apply({'params': params['target']}, x_1xT).last_hidden_BxTxD[:, i]
    l = bitlm_lib.head_logits(params['bitlm'], h, jnp.full((1, 1, 6), bitlm_lib.MASKED))[0, 0]
    score = jax.nn.log_sigmoid(l) @ codes.T + jax.nn.log_sigmoid(-l) @ (1 - codes).T
    return jnp.argmax(score), bitlm_lib.decode_bits((l > 0).astype(jnp.int32))

  hit_invalid = False
  for prompt, row in zip(PROMPTS, rows):
    seq = list(prompt)
    for tok in row.tokens:
      best, raw = greedy_choice(jnp.asarray([seq + [PAD] * (32 - len(seq))]), len(seq) - 1)
      assert tok == int(best)
      hit_invalid |= int(raw) >= V
      seq.append(tok)
  assert hit_invalid  # the MSB bias makes the raw argmax code invalid somewhere


@pytest.mark.parametrize('kind', ['masked', 'analog'])
def test_no_id_at_or_above_the_vocabulary_and_sampling_is_batch_invariant(kind):
  model, params = _lm(2, kind=kind)
  # Bias every bit towards 1: raw codes are mostly 63 (invalid).
  params['bitlm'] = {**params['bitlm'], 'out_bias': jnp.full((6,), 3.0)}
  sampling = SamplingConfig(temperature=1.0)
  rows, _ = _run(model, params, 'bitlm:steps=3', sampling=sampling)
  assert all(0 <= t < V for r in rows for t in r.tokens)
  alone, _ = _run(model, params, 'bitlm:steps=3', sampling=sampling, batch_size=1)
  assert [r.tokens for r in alone] == [r.tokens for r in rows]
  greedy, _ = _run(model, params, 'bitlm:steps=3')
  assert all(0 <= t < V for r in greedy for t in r.tokens)
  alone, _ = _run(model, params, 'bitlm:steps=3', batch_size=1)
  assert [r.tokens for r in alone] == [r.tokens for r in greedy]


@pytest.mark.parametrize('eta', [0.0, 1.0])
def test_the_analog_sampler_is_a_ddim_loop_ending_at_noise_level_zero(eta):
  """denoise_block with an analog head against DDIM written out by hand: x from N(0, I) per
  row key, head called at t = 1, 1 - 1/S, ..., 1/S; the last update lands on t = 0, where x
  is the clean estimate tanh(logit / 2) and the bits are the signs of the last logits."""
  S, K, B = 5, 3, 4
  ts = np.asarray(bitlm_lib.analog_times(S))
  np.testing.assert_allclose(ts, [1.0, 0.8, 0.6, 0.4, 0.2, 0.0], atol=1e-7)
  a0, s0 = bitlm_lib.analog_schedule(0.0)
  a1, s1 = bitlm_lib.analog_schedule(1.0)
  assert (float(a0), float(s0)) == (1.0, 0.0) and abs(float(a1)) < 1e-6 and float(s1) == 1.0
  _, params = _lm(K, seed=2, kind='analog')
  head = params['bitlm']
  cond = jax.random.normal(jax.random.key(7), (B, head['cond'].shape[0]))
  keys = jax.random.split(jax.random.key(8), B)
  head = {**head, 'bit_in': head['bit_in'] * 4.0}  # the logits follow the noisy input
  ids, bits = bitlm_lib.denoise_block(head, cond, S, V, temperature=eta, keys_B=keys)
  x_got, l_got = bitlm_lib.analog_sample(head, cond, S, temperature=eta, keys_B=keys)
  draw = lambda i: np.stack([np.asarray(jax.random.normal(jax.random.fold_in(k, i), (K, 6)))
                             for k in keys]).astype(np.float64)
  x = draw(0)
  for s in range(S):
    t, t2 = ts[s], ts[s + 1]
    l = np.asarray(bitlm_lib.analog_logits(head, cond, jnp.asarray(x, jnp.float32),
                                           jnp.full((B,), t)), np.float64)
    a, sd = math.cos(math.pi * t / 2), math.sin(math.pi * t / 2)
    a2, sd2 = math.cos(math.pi * t2 / 2), math.sin(math.pi * t2 / 2)
    x0 = np.tanh(l / 2)
    eps = (x - a * x0) / sd
    sigma = eta * sd2 / sd * math.sqrt(max(1 - (a / a2) ** 2, 0.0))
    x = a2 * x0 + math.sqrt(max(sd2 ** 2 - sigma ** 2, 0.0)) * eps + sigma * draw(s + 1)
  np.testing.assert_allclose(l_got, l, rtol=1e-3, atol=1e-3)  # the same trajectory
  np.testing.assert_allclose(x, np.tanh(l / 2), atol=1e-6)  # noise level 0 at the last step
  np.testing.assert_allclose(x_got, x, atol=1e-3)
  np.testing.assert_array_equal(bits, (l > 0).astype(np.int32))
  raw = bitlm_lib.decode_bits(jnp.asarray(l > 0, jnp.int32))
  np.testing.assert_array_equal(ids, bitlm_lib.valid_ids(raw, jnp.asarray(l, jnp.float32), V))
  assert np.asarray(ids).max() < V


def test_eos_ends_a_row_inside_a_block():
  model, params = _lm(3)
  free, _ = _run(model, params, 'bitlm:steps=4')
  eos = free[2].tokens[4]  # inside the second block of row 2
  rows, _ = _run(model, params, 'bitlm:steps=4', eos=eos)
  for f, r in zip(free, rows):
    cut = f.tokens.index(eos) + 1 if eos in f.tokens else len(f.tokens)
    assert r.tokens == f.tokens[:cut]


def _loss_case(kind):
  """A K = 2 head of `kind`, two rows of 6 tokens, the backbone's hidden states and a key:
  (head, hidden [2, 5, D], tokens [2, 6], rng, the objective's (loss, metrics))."""
  model, params = _lm(2, kind=kind)
  head = params['bitlm']
  tokens = jnp.asarray([[3, 9, 4, 39, 7, 2], [1, 1, 0, 5, 33, 8]])
  hidden = model.apply({'params': params['target']}, tokens[:, :-1]).last_hidden_BxTxD
  rng = jax.random.key(5)
  return head, hidden, tokens, rng, objective_lib.block_loss(head, hidden, tokens, rng, eps=1e-3)


def _block_bits(tokens, b, t):
  """[2, 6] the 6-bit codes (most significant first) of row b's tokens t + 1, t + 2."""
  return np.array([[(int(tokens[b, t + 1 + k]) >> (5 - j)) & 1 for j in range(6)]
                   for k in range(2)])


def test_the_objective_equals_hand_computed_values():
  # All bits masked at r = 1/2, logits 0: each bit costs log 2; K = 2, b = 2 -> 4 log 2 / r / K.
  z = jnp.zeros((1, 2, 2))
  got = objective_lib.block_bound(z, jnp.asarray([[[0, 1], [1, 1]]]), z == 0, jnp.asarray([0.5]))
  np.testing.assert_allclose(got, [4 * math.log(2)], rtol=1e-6)
  # The full loss on a tiny case against a loop over blocks and bits (same noise draws).
  head, hidden, tokens, rng, (loss, metrics) = _loss_case('masked')
  r, masked = objective_lib.draw_noise(rng, (2 * 4, 2, 6), 1e-3)  # N = T - K + 1 = 4 per row
  r, masked = np.asarray(r), np.asarray(masked)
  total = []
  for b in range(2):
    for t in range(4):
      i = b * 4 + t
      bits = _block_bits(tokens, b, t)
      state = np.where(masked[i], bitlm_lib.MASKED, bits)
      l = np.asarray(bitlm_lib.head_logits(head, hidden[b, t][None], jnp.asarray(state)[None]))[0]
      bce = np.where(bits == 1, np.log1p(np.exp(-l)), np.log1p(np.exp(l)))
      total.append(np.sum(bce * masked[i]) / r[i] / 2)
  np.testing.assert_allclose(float(loss), np.mean(total), rtol=1e-5)
  assert 0 < float(metrics['mask_frac']) < 1


def test_the_analog_objective_equals_hand_computed_values():
  # Logits 0: each bit costs log 2 whatever its value; K = 2, b = 3 -> 6 log 2 / K per token.
  got = objective_lib.analog_block_loss(jnp.zeros((1, 2, 3)), jnp.asarray([[[0, 1, 1], [1, 0, 0]]]))
  np.testing.assert_allclose(got, [3 * math.log(2)], rtol=1e-6)
  # Noising: t = 0 gives the clean +-1 bits, t = 1 the noise.
  bits, e = jnp.asarray([[1, 0, 1]]), jnp.asarray([[0.3, -2.0, 0.5]])
  np.testing.assert_allclose(bitlm_lib.noise_bits(bits, jnp.zeros(1), e), [[1, -1, 1]])
  np.testing.assert_allclose(bitlm_lib.noise_bits(bits, jnp.ones(1), e), e, atol=1e-6)
  # The full loss against a loop over blocks and bits (same noise draws).
  head, hidden, tokens, rng, (loss, metrics) = _loss_case('analog')
  t, noise = objective_lib.draw_analog_noise(rng, (2 * 4, 2, 6))
  t, noise = np.asarray(t, np.float64), np.asarray(noise, np.float64)
  total = []
  for b in range(2):
    for s in range(4):
      i = b * 4 + s
      bits = _block_bits(tokens, b, s)
      x = math.cos(math.pi * t[i] / 2) * (2 * bits - 1) + math.sin(math.pi * t[i] / 2) * noise[i]
      l = np.asarray(bitlm_lib.analog_logits(head, hidden[b, s][None],
                                             jnp.asarray(x, jnp.float32)[None],
                                             jnp.asarray([t[i]], jnp.float32)))[0]
      bce = np.where(bits == 1, np.log1p(np.exp(-l)), np.log1p(np.exp(l)))
      total.append(np.sum(bce) / 2)
  np.testing.assert_allclose(float(loss), np.mean(total), rtol=1e-5)
  assert 0 < float(metrics['t_mean']) < 1 and 0 <= float(metrics['bit_acc']) <= 1


def test_the_folded_objective_equals_hand_computed_values():
  """Rows of 9 tokens, K = 2: left-padded by the drawn offsets, 4 blocks; the backbone over
  the folded blocks 0 .. 2, each state conditioning the next block (same noise draws)."""
  model, params = _lm(2, seed=5, fold=True)
  head = params['bitlm']
  tokens = jnp.asarray([[3, 9, 4, 39, 7, 2, 5, 5, 1], [1, 1, 0, 5, 33, 8, 2, 12, 6]])
  rng = jax.random.key(6)
  loss, metrics = objective_lib.fold_loss(model, {'model': params['target'], 'bitlm': head},
                                          tokens, rng, eps=1e-3)
  rng, k_off = jax.random.split(rng)
  offsets = np.asarray(jax.random.randint(k_off, (2,), 0, 2))
  r, masked = objective_lib.draw_noise(rng, (2 * 3, 2, 6), 1e-3)
  r, masked = np.asarray(r), np.asarray(masked)
  total = []
  for b in range(2):
    row = list(np.asarray(tokens[b]))[:9 - offsets[b]]
    slots = [None] * offsets[b] + row
    x = _np_fold(params, [t for t in slots[:6] if t is not None], 2)  # blocks 0 .. 2
    hidden = model.apply({'params': params['target']}, None, jnp.arange(3)[None],
                         inputs_embeds_BxTxD=jnp.asarray(x, jnp.float32)[None]
                         ).last_hidden_BxTxD[0]
    for j in range(3):
      i = b * 3 + j
      blk = slots[2 * (j + 1):2 * (j + 2)]
      bits = np.array([[(int(t) >> (5 - q)) & 1 for q in range(6)] for t in blk])
      state = np.where(masked[i], bitlm_lib.MASKED, bits)
      l = np.asarray(bitlm_lib.head_logits(head, hidden[j][None], jnp.asarray(state)[None]))[0]
      bce = np.where(bits == 1, np.log1p(np.exp(-l)), np.log1p(np.exp(l)))
      total.append(np.sum(bce * masked[i]) / r[i] / 2)
  np.testing.assert_allclose(float(loss), np.mean(total), rtol=1e-5)
  np.testing.assert_allclose(float(metrics['pad_frac']), offsets.sum() / 16)
  assert offsets.sum() > 0  # a pad slot is exercised
  # The held-out layout (benchmarks/bitlm.py): offset K - 1 and one block more, so the blocks
  # after the first are tokens 1 .. n K, the ones the per-token backbone's bound scores.
  ids, valid = objective_lib.fold_rows(tokens, jnp.full((2,), 1), 2, num_blocks=5)
  np.testing.assert_array_equal(ids[:, 1:].reshape(2, 8), tokens[:, 1:])
  np.testing.assert_array_equal(ids[:, 0, 1], tokens[:, 0])
  assert np.asarray(valid[:, 1:]).all() and not np.asarray(valid[:, 0, 0]).any()


@pytest.mark.parametrize('arg, kind', [('test', 'masked'), ('test,head=analog', 'analog'),
                                       ('test,fold', 'masked')])
def test_the_objective_trains_backbone_and_head_from_the_config(arg, kind):
  import configs.bitlm  # pylint: disable=g-import-not-at-top
  cfg = configs.bitlm.get_config(arg)
  model = Transformer(small_config(vocab_size=259))
  objective = make_objective('bitlm', model, cfg)
  params = {'model': init_params(model, jax.random.key(0)), **objective.extras(jax.random.key(1))}
  shape = bitlm_lib.head_shape(params['bitlm'])
  assert shape.bits == 9 and shape.kind == kind and shape.fold == arg.endswith('fold')
  batch = {'tokens': jax.random.randint(jax.random.key(2), (2, 33), 0, 259)}
  (loss, _), g = jax.jit(jax.value_and_grad(objective.loss_fn, has_aux=True))(
      params, batch, jax.random.key(3))
  assert np.isfinite(float(loss))
  # The backbone learns through the head (its vocabulary head gets no gradient).
  assert float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(g['model']['layer_0']))) > 0
  if shape.fold:
    assert float(jnp.abs(g['bitlm']['fold']).sum()) > 0


def test_clear_errors():
  model, params = _lm(2)
  with pytest.raises(ValueError, match=r'steps must be in 1 \.\. 12'):
    _run(model, params, 'bitlm:steps=13')
  with pytest.raises(ValueError, match='steps must be >= 0'):
    registry.build('bitlm', {'steps': -1})
  with pytest.raises(ValueError, match='temperature only'):
    registry.build('bitlm', {}, SamplingConfig(temperature=1.0, top_k=5))
  with pytest.raises(ValueError, match='bitwise diffusion head'):
    _run(model, {'target': params['target']}, 'bitlm')
  with pytest.raises(ValueError, match="Decoder 'bitlm' needs a BitLM model"):
    registry.build('bitlm').for_model({'target': ModelKind()})
  with pytest.raises(ValueError, match="Decoder 'ar' needs an autoregressive"):
    registry.build('ar').for_model({'target': ModelKind(heads=('bitlm',))})
  assert registry.build('bitlm').for_model({'target': ModelKind(heads=('bitlm',))})
  with pytest.raises(ValueError, match='`bitlm` config section'):
    make_objective('bitlm', model, None)
  with pytest.raises(ValueError, match='hold no block of 8'):
    objective_lib.block_targets(jnp.zeros((1, 6), jnp.int32), 8)
  with pytest.raises(ValueError, match='fewer than two blocks of 4'):
    objective_lib.fold_rows(jnp.zeros((1, 7), jnp.int32), jnp.zeros((1,), jnp.int32), 4)
  with pytest.raises(ValueError, match='needs a folded head'):
    bitlm_lib.fold_blocks(model.cfg, params['target'], params['bitlm'],
                          jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), bool))
  _, folded = _lm(2, fold=True)
  with pytest.raises(ValueError, match='blocks of 3 tokens, but the fold was built for K = 2'):
    bitlm_lib.fold_blocks(model.cfg, folded['target'], folded['bitlm'],
                          jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 3), bool))
  with pytest.raises(ValueError, match='width 10 is not a multiple'):
    bitlm_lib.HeadShape(block=2, bits=6, width=10, layers=1, heads=4, mlp=8, cond=4)


def test_clear_errors_of_the_head_setting():
  import configs.bitlm  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="head kind must be one of .*'gauss'"):
    bitlm_lib.HeadShape(block=2, bits=6, width=8, layers=1, heads=2, mlp=8, cond=4,
                        kind='gauss')
  with pytest.raises(ValueError, match="head must be 'masked' or 'analog'"):
    configs.bitlm.get_config('tiny,head=gauss')
  assert configs.bitlm.get_config('tiny,fold').bitlm.fold
  assert not configs.bitlm.get_config('tiny').bitlm.fold
  with pytest.raises(ValueError, match='options are a block size'):
    configs.bitlm.get_config('tiny,analog')
  cfg = configs.bitlm.get_config('test')
  cfg.unlock()
  cfg.bitlm.head = 'gauss'
  with pytest.raises(ValueError, match='head kind must be one of'):
    make_objective('bitlm', Transformer(small_config(vocab_size=V)), cfg)
  model, params = _lm(2, kind='analog')
  D = params['bitlm']['cond'].shape[0]
  with pytest.raises(ValueError, match=r'eta.*must be in \[0, 1\]'):
    _run(model, params, 'bitlm:steps=3', sampling=SamplingConfig(temperature=1.5))
  with pytest.raises(ValueError, match='use analog_logits'):
    bitlm_lib.head_logits(params['bitlm'], jnp.zeros((1, D)), jnp.zeros((1, 2, 6), jnp.int32))
  with pytest.raises(ValueError, match='pass keys_B'):
    bitlm_lib.denoise_block(params['bitlm'], jnp.zeros((1, D)), 3, V)
  _, masked = _lm(2)
  with pytest.raises(ValueError, match='needs an analog head'):
    bitlm_lib.analog_logits(masked['bitlm'], jnp.zeros((1, D)), jnp.zeros((1, 2, 6)),
                            jnp.zeros((1,)))
