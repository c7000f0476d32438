"""The AR decoder: equals a naive argmax loop, batches are first-class, errors are clear."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testlib import small_config
from decoding import Models, SamplingConfig, registry, run_decoder
from models import Transformer, init_params
from models import sharding

PAD = 0


@pytest.fixture(scope='module')
def lm():
  cfg = small_config(vocab_size=48, num_layers=2)
  model = Transformer(cfg)
  # A larger init spreads the logits so greedy outputs vary between tokens.
  params = init_params(Transformer(small_config(vocab_size=48, init_std=0.3)),
                       jax.random.key(7))
  return model, params


PROMPTS = [[1, 5, 9, 3], [2, 7], [4, 4, 8, 1, 6, 2, 9], [3]]


@jax.jit
def _full_logits(params, tokens_1xT):
  return Transformer(small_config(vocab_size=48)).apply({'params': params}, tokens_1xT).logits_BxTxV


def _naive_greedy(model, params, prompt, n, eos):
  """Argmax of a full (no-cache) forward, one token at a time; right padding is harmless
  under the causal mask, so one compiled shape serves every length."""
  del model
  seq = list(prompt)
  for _ in range(n):
    padded = np.zeros((1, 24), np.int32)
    padded[0, :len(seq)] = seq
    seq.append(int(jnp.argmax(_full_logits(params, padded)[0, len(seq) - 1])))
    if seq[-1] == eos:
      break
  return seq[len(prompt):]


def _run(model, params, prompts, n=10, eos=47, sampling=SamplingConfig(), **kw):
  dec = registry.build('ar', sampling=sampling)
  return run_decoder(dec, Models(model), {'target': params}, prompts, max_new_tokens=n,
                     cache_size=32, eos_id=eos, pad_id=PAD, **kw)


def test_greedy_equals_naive_loop_with_rows_ending_at_different_times(lm):
  model, params = lm
  free = [_naive_greedy(model, params, p, 10, eos=-1) for p in PROMPTS]
  # Use a token that row 0 emits at step 3 as EOS: rows then stop at different times.
  eos = free[0][3]
  expected = [_naive_greedy(model, params, p, 10, eos=eos) for p in PROMPTS]
  assert len({len(e) for e in expected}) > 1, 'rows should finish at different times'
  rows, stats = _run(model, params, PROMPTS, eos=eos)
  assert [r.tokens for r in rows] == expected
  for r in rows:
    assert r.target_forwards == len(r.tokens) and r.tau == 1.0
  assert stats.generated == sum(map(len, expected))
  assert stats.step_tokens_hist == [0, stats.generated]


def test_prompt_alone_equals_prompt_in_batch(lm):
  model, params = lm
  sampling = SamplingConfig(temperature=1.0, top_k=20)
  batch, _ = _run(model, params, PROMPTS, sampling=sampling, seed=3)
  for i, prompt in enumerate(PROMPTS):
    # Row i alone: it must keep its key, so pad the list with other prompts before it.
    alone, _ = _run(model, params, PROMPTS[:i + 1], sampling=sampling, seed=3, batch_size=1)
    assert alone[i].tokens == batch[i].tokens
  greedy_batch, _ = _run(model, params, PROMPTS)
  greedy_alone, _ = _run(model, params, [PROMPTS[2]])
  assert greedy_alone[0].tokens == greedy_batch[2].tokens


def test_sampling_uses_the_seed(lm):
  model, params = lm
  sampling = SamplingConfig(temperature=1.0)
  a, _ = _run(model, params, PROMPTS, sampling=sampling, seed=0)
  b, _ = _run(model, params, PROMPTS, sampling=sampling, seed=0)
  c, _ = _run(model, params, PROMPTS, sampling=sampling, seed=1)
  assert [r.tokens for r in a] == [r.tokens for r in b]
  assert [r.tokens for r in a] != [r.tokens for r in c]


def test_sharded_decode_equals_single_device(lm):
  model, params = lm
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 1, 'tensor': 4})
  for sampling in (SamplingConfig(), SamplingConfig(temperature=1.0)):
    ref, _ = _run(model, params, PROMPTS, sampling=sampling)
    out, _ = _run(model, params, PROMPTS, sampling=sampling, mesh=mesh)
    assert [r.tokens for r in out] == [r.tokens for r in ref]


def test_bad_inputs_give_clear_errors(lm):
  model, params = lm
  with pytest.raises(ValueError, match='Prompt 1 is empty'):
    _run(model, params, [[1, 2], []])
  with pytest.raises(ValueError, match='needs 35 cache slots but the cache has 32'):
    _run(model, params, [[1] * 25], n=10)
  with pytest.raises(ValueError, match='No prompts'):
    _run(model, params, [])
  with pytest.raises(ValueError, match="Unknown decoder 'nope'"):
    registry.build('nope')
  with pytest.raises(ValueError, match='Unknown settings'):
    registry.build('ar', {'gamma': 3})
  with pytest.raises(ValueError, match='top_p'):
    SamplingConfig(top_p=0.0)


def test_run_decoder_keeps_a_bounded_number_of_programs(lm, monkeypatch):
  """Programs are reused for repeated shapes, and the oldest is dropped past the bound (every
  kept program holds machine code in memory mappings, which a process runs out of)."""
  from decoding import runner  # pylint: disable=g-import-not-at-top
  model, params = lm
  monkeypatch.setattr(runner, '_COMPILED_MAX', 2)
  runner.clear_compiled()
  compile_s = lambda n: _run(model, params, PROMPTS[:1], n=n)[1].compile_time_s
  assert compile_s(3) > 0 and compile_s(4) > 0
  assert compile_s(3) == 0  # reused; now the most recent
  assert compile_s(5) > 0   # evicts n=4, the least recently used
  assert len(runner._COMPILED) == 2
  assert compile_s(3) == 0
  assert compile_s(4) > 0
