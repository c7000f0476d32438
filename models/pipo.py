"""PIPO, Pair-In Pair-Out (Tan et al. 2026, "Pair-In, Pair-Out: Latent Multi-Token Prediction
for Efficient LLMs", arXiv 2605.27255): a base model that reads and writes two tokens per
position.

  compressor  folds a chunk of one or two tokens (a, b) into one input vector,
                x = E(a) W_first + [b present] E(b) W_second + [b absent] hole + bias,
              with E the base's token embedding. A chunk of one token (b absent: a rejected
              draft, an odd prompt's last token) reads the learned `hole` vector.
  MTP head    unfolds the hidden state at a chunk into the token after the next one: one
              `models.heads.MTPModules` depth reading the base's final hidden state h and
              the embedding of the next token t1, predicting t2 through the base's output head.
  confidence  a logistic head that says whether the MTP token is right, read from
              stop_gradient([h; z; log max p2; entropy of p2]) (z = the MTP head's normed
              output, p2 its distribution): the decoder accepts the pair when
              sigmoid(conf) >= threshold, with no verifier forward.

The base runs over chunks: position (RoPE and cache slot) k is chunk k, so a sequence of n
tokens costs between n / 2 and n positions. Chunk k's outputs predict the two tokens after it
(head 1: the next one; MTP head: the one after), whatever the next chunk's size.

Initialisation (`init_params`): W_first = I, W_second = 0, hole = 0, bias = 0, so a chunk of
one token is the base's own embedding and the untrained PIPO model reading single-token
chunks *is* the base model (tested: `pipo` then decodes as `ar`). The confidence head starts
at zero (p = 0.5). Training (`training/objectives/pipo.py`) fine-tunes the base and trains the
three parts.

Differences from the paper: the paper trains with SFT then on-policy distillation (OPD) on
LoRA adapters of Qwen3.5 and labels the confidence head by OPD's rejection-sampling
criterion; ours fine-tunes the whole (tiny) base on the task's data with 25% single-token
chunks (the paper's random padding at draft positions) and labels the confidence head by
whether the MTP head's greedy token equals the data's. The compressor and heads are our own
reading of the paper's description.

Axis letters: B batch, T chunks (positions), D model width, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import config as config_lib
from models import heads as heads_lib
from models import layers
from models import transformer as transformer_lib

PIPO = 'pipo'
CONF_FEATURES = 2  # scalar features of the confidence head: log max p2, entropy of p2


def check_model(cfg: config_lib.ModelConfig) -> None:
  """ValueError unless PIPO fits `cfg` (an attention-only causal model)."""
  if config_lib.DELTAPRODUCT in cfg.layer_types:
    raise ValueError('pipo: models with recurrent (deltaproduct) layers are not supported '
                     '(the decoder feeds chunk inputs through the attention cache).')


def init_params(cfg: config_lib.ModelConfig, rng: jax.Array) -> dict:
  """params['pipo'] (see the module docstring): {'compress', 'mtp', 'conf'}."""
  check_model(cfg)
  D = cfg.d_model
  mtp = nn.unbox(heads_lib.MTPModules(cfg, 1).init(
      rng, jnp.zeros((1, 1, D)), jnp.zeros((1, 2), jnp.int32), jnp.zeros((cfg.vocab_size, D)),
      jnp.zeros((cfg.vocab_size, D)))['params'])
  return {'compress': {'w_first': jnp.eye(D, dtype=jnp.float32),
                       'w_second': jnp.zeros((D, D), jnp.float32),
                       'hole': jnp.zeros((D,), jnp.float32),
                       'bias': jnp.zeros((D,), jnp.float32)},
          'mtp': mtp,
          'conf': {'w': jnp.zeros((2 * D,), jnp.float32),
                   'u': jnp.zeros((CONF_FEATURES,), jnp.float32),
                   'b': jnp.zeros((), jnp.float32)}}


def compress(cfg: config_lib.ModelConfig, model_params: Any, pipo: Any, first_BxT: jax.Array,
             second_BxT: jax.Array, has_second_BxT: jax.Array) -> jax.Array:
  """Chunk input vectors [B, T, D] of chunks (first, second if has_second)."""
  emb = lambda t: layers.Embedder(cfg).apply({'params': model_params['embed']}, t)
  c = pipo['compress']
  dt = cfg.compute_dtype
  x = jnp.einsum('BTD,DE->BTE', emb(first_BxT), c['w_first'].astype(dt))
  second = jnp.einsum('BTD,DE->BTE', emb(second_BxT), c['w_second'].astype(dt))
  x = x + jnp.where(has_second_BxT[..., None], second, c['hole'].astype(dt))
  return x + c['bias'].astype(dt)


def forward(model: transformer_lib.Transformer, model_params: Any, pipo: Any,
            first_BxT: jax.Array, second_BxT: jax.Array, has_second_BxT: jax.Array,
            positions_BxT: jax.Array, cache=None) -> transformer_lib.ModelOutput:
  """The base over chunk inputs at chunk positions (< 0 = padding); with `cache`, written at
  slots = positions. `.logits_BxTxV` predicts each chunk's next token."""
  x = compress(model.cfg, model_params, pipo, first_BxT, second_BxT, has_second_BxT)
  return model.apply({'params': model_params}, None, positions_BxT, cache=cache,
                     inputs_embeds_BxTxD=x)


def extra_token(cfg: config_lib.ModelConfig, model_params: Any, pipo: Any, h_BxTxD: jax.Array,
                next_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(MTP logits [B, T, V] of the token after `next`, confidence logits [B, T]) from the
  base's final hidden states h (`ModelOutput.last_hidden_BxTxD`) and the next tokens."""
  mtp = heads_lib.MTPModules(cfg, 1)
  in_emb = heads_lib.input_embedding(model_params)
  out_emb = heads_lib.output_embedding(model_params, cfg)
  z, logits = mtp.apply({'params': pipo['mtp']}, 0, h_BxTxD, next_BxT, in_emb, out_emb,
                        method=heads_lib.MTPModules.step)
  z = layers.RMSNorm(cfg.norm_eps, 'embed', cfg.weight_dtype).apply(
      {'params': pipo['mtp']['module_0']['out_norm']}, z)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  feats = jnp.concatenate([h_BxTxD.astype(jnp.float32), z.astype(jnp.float32)], -1)
  scalars = jnp.stack([jnp.max(logp, -1), -jnp.sum(jnp.exp(logp) * logp, -1)], -1)
  feats, scalars = jax.lax.stop_gradient(feats), jax.lax.stop_gradient(scalars)
  c = pipo['conf']
  conf = feats @ c['w'] + scalars @ c['u'] + c['b']
  return logits, conf


def prompt_chunks(prompt_BxP: jax.Array, prompt_len_B: jax.Array, pair: bool
                  ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
  """Right-padded prompts as chunks: (first, second, has_second, positions, chunks_B), each
  [B, C] but chunks_B [B]. `pair`: tokens (0, 1), (2, 3), ... with an odd row's last token
  alone (C = ceil(P / 2)); else one token per chunk (C = P). Positions past a row's chunks
  are -1 (padding)."""
  B, P = prompt_BxP.shape
  if not pair:
    pos = jnp.where(jnp.arange(P)[None] < prompt_len_B[:, None], jnp.arange(P)[None], -1)
    return (prompt_BxP, jnp.zeros_like(prompt_BxP), jnp.zeros((B, P), bool), pos,
            prompt_len_B)
  padded = jnp.pad(prompt_BxP, ((0, 0), (0, P % 2)))
  C = padded.shape[1] // 2
  first, second = padded[:, 0::2], padded[:, 1::2]
  k_1xC = jnp.arange(C)[None]
  chunks_B = (prompt_len_B + 1) // 2
  has_second = 2 * k_1xC + 1 < prompt_len_B[:, None]
  pos = jnp.where(k_1xC < chunks_B[:, None], k_1xC, -1)
  return first, second, has_second, pos, chunks_B
