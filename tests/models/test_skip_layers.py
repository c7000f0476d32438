"""The forward's `skip_layers_BxT` (SkipDecode training): zero skips are the plain forward, a
token that skips layers carries its embedding into the first layer it runs."""

import jax
import jax.numpy as jnp
import numpy as np

from testlib import jit_apply, small_config
from models import Transformer, init_params


def test_skip_layers_zero_equals_plain_and_skipped_tokens_enter_later_layers():
  model = Transformer(small_config(num_layers=3))
  params = init_params(model, jax.random.key(0))
  apply = jit_apply(model)
  tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, 64)
  plain = apply(params, tokens, return_hidden=True)
  zero = apply(params, tokens, skip_layers_BxT=jnp.zeros((2, 9), jnp.int32), return_hidden=True)
  np.testing.assert_array_equal(zero.logits_BxTxV, plain.logits_BxTxV)
  # Skips that never decrease along the row: the last token (skip 2) sees, at layer 2, the
  # earlier tokens' layer-2 inputs; it equals running layer 2 alone on the streams entering it.
  skip = jnp.asarray([[0, 0, 0, 1, 1, 1, 2, 2, 2]] * 2, jnp.int32)
  out = apply(params, tokens, skip_layers_BxT=skip, return_hidden=True)
  emb = plain.hidden[0]
  for t in range(3, 9):  # a skipped layer leaves the token's stream unchanged
    s = int(skip[0, t])
    for i in range(s):
      np.testing.assert_array_equal(out.hidden[i + 1][:, t], emb[:, t])
  top = apply(params, None, inputs_embeds_BxTxD=out.hidden[2], layer_range=(2, 3))
  np.testing.assert_allclose(top.logits_BxTxV, out.logits_BxTxV, rtol=1e-5, atol=1e-5)
