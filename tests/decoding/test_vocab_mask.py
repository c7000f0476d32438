"""Ids a model never had (`ModelConfig.valid_vocab_size`; e.g. the special tokens a Hugging
Face import appends) are never produced, by any decoder, greedy or sampled: the model's head
masks them, so no decoder can draw, draft, accept or feed them.

The masked ids' embedding rows are scaled up so that without the mask they would win almost
every argmax and take almost all the probability mass."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import decoding
from decoding import base, registry, runner
from models import Transformer, init_params
from testlib import small_config

V, VALID = 64, 48
EOS, PAD = 46, 47
LATENT = dict(think_start_id=40, think_end_id=41, latent_id=42, pause_id=43)
DIFFUSION = dict(mask_id=45, shift=0, block_causal=0, block_size=4)
# Each family: AR, speculative (a static tree; early exit through the shared head), latent
# (soft thinking: probability-weighted embeddings), diffusion (LLaDA).
DECODERS = {'ar': {}, 'token_recycling': {}, 'layerskip': {}, 'soft_thinking': LATENT,
            'llada': DIFFUSION}
PROMPTS = [[1, 5, 9, 3, 7, 2], [4, 8], [6, 6, 6, 1]]


@pytest.fixture(scope='module')
def lm():
  base_cfg = small_config(vocab_size=V)
  params = init_params(Transformer(base_cfg), jax.random.key(0))
  params['embed']['embedding'] = params['embed']['embedding'].at[VALID:].multiply(100.0)
  masked = Transformer(dataclasses.replace(base_cfg, valid_vocab_size=VALID))
  return Transformer(base_cfg), masked, params


def test_the_masked_rows_would_dominate_without_the_mask(lm):
  plain, masked, params = lm
  toks = jnp.asarray([PROMPTS[0]])
  p_plain = jax.nn.softmax(plain.apply({'params': params}, toks).logits_BxTxV, -1)
  p_masked = jax.nn.softmax(masked.apply({'params': params}, toks).logits_BxTxV, -1)
  assert float(p_plain[..., VALID:].sum(-1).min()) > 0.5
  assert float(p_masked[..., VALID:].max()) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(DECODERS))
def test_no_decoder_produces_an_id_the_model_never_had(lm, name):
  """Sampled at temperature 1 (greedy would only need the argmax): 3 rows x 16 tokens, where
  an unmasked model would draw a masked id at nearly every position."""
  _, masked, params = lm
  dec = registry.build(name, DECODERS[name], decoding.SamplingConfig(temperature=1.0))
  rows, _ = runner.run_decoder(dec, base.Models(masked), {'target': params}, PROMPTS,
                               max_new_tokens=16, cache_size=128, eos_id=EOS, pad_id=PAD)
  tokens = np.concatenate([np.asarray(r.tokens, np.int64) for r in rows])
  assert tokens.size, name
  assert tokens.max() < VALID, (name, tokens[tokens >= VALID])
