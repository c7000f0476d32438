"""The attribute classifier of classifier-guided diffusion decoding: p(y | x_t), y a class of
an answer attribute (data/tasks/attributes.py), x_t a partly masked sequence.

A small bidirectional Transformer of its own (2 layers, width 64, ~0.1M parameters), not a
head on the diffusion model's hidden states, because of how guidance uses it
(decoding/diffusion/guidance.py):
  * exact guidance scores every (position, candidate token) pair of a block: B x M x K whole
    sequences per step. A classifier that costs a fraction of the diffusion model makes that
    affordable; a head on the diffusion model would need B x M x K forwards of the model.
  * first-order guidance differentiates log p(y | x) with respect to the one-hot input: one
    forward and backward of a small model, not of the diffusion model.
  * it does not depend on the diffusion model's weights, so one classifier guides any model
    with the same tokenizer (CtrlDiff and fixed-size block diffusion alike).
The input is token ids or a [B, T, V] one-hot (or any distribution over tokens: the token
embedding is one-hot @ embedding table, so the same function is differentiable in it). The
class logits are read from position 0 (the <bos>; attention is bidirectional, so it sees the
whole row), which does not depend on how much padding or <eos> tail a row carries.
Trained on randomly masked rows by training/objectives/attribute.py; its params are a run's
extra tree `HEAD` (`models.kind.HEADS`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

HEAD = 'attribute'  # the run's extra tree (`models.kind.HEADS`)


class _Block(nn.Module):
  """Pre-norm bidirectional attention + MLP over x [B, T, D] with valid keys [B, T]."""
  width: int
  heads: int

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, valid_BxT: jax.Array) -> jax.Array:
    D, H = self.width, self.heads
    h = nn.LayerNorm(name='norm_attn')(x_BxTxD)
    qkv = nn.Dense(3 * D, name='qkv')(h).reshape(*h.shape[:2], 3, H, D // H)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    s_BxHxTxT = jnp.einsum('BTHd,BSHd->BHTS', q, k) / jnp.sqrt(D // H).astype(h.dtype)
    s_BxHxTxT = jnp.where(valid_BxT[:, None, None, :], s_BxHxTxT, -1e9)
    a = jnp.einsum('BHTS,BSHd->BTHd', jax.nn.softmax(s_BxHxTxT, axis=-1), v)
    x_BxTxD = x_BxTxD + nn.Dense(D, name='attn_out')(a.reshape(*h.shape[:2], D))
    h = nn.LayerNorm(name='norm_mlp')(x_BxTxD)
    return x_BxTxD + nn.Dense(D, name='mlp_out')(nn.gelu(nn.Dense(2 * D, name='mlp_in')(h)))


class AttributeClassifier(nn.Module):
  """(tokens [B, T] int | one-hot [B, T, V] float, valid [B, T] bool) -> logits [B, C] (fp32).

  Positions where `valid` is False (padding) are never attended to.
  """
  vocab_size: int
  num_classes: int
  width: int = 64
  heads: int = 4
  layers: int = 2
  max_len: int = 256

  @nn.compact
  def __call__(self, inputs: jax.Array, valid_BxT: jax.Array) -> jax.Array:
    emb = self.param('embed', nn.initializers.normal(0.02), (self.vocab_size, self.width))
    pos = self.param('pos_embed', nn.initializers.normal(0.02), (self.max_len, self.width))
    if jnp.issubdtype(inputs.dtype, jnp.integer):
      x = emb[inputs]
    else:
      if inputs.shape[-1] != self.vocab_size:
        raise ValueError(f'One-hot inputs need {self.vocab_size} entries per token, got '
                         f'{inputs.shape}.')
      x = jnp.einsum('BTV,VD->BTD', inputs.astype(jnp.float32), emb)
    T = x.shape[1]
    if T > self.max_len:
      raise ValueError(f'The attribute classifier reads at most {self.max_len} tokens, got {T}.')
    x = x + pos[None, :T]
    for i in range(self.layers):
      x = _Block(self.width, self.heads, name=f'block{i}')(x, valid_BxT)
    return nn.Dense(self.num_classes, name='out')(nn.LayerNorm(name='norm_out')(x[:, 0]))


def init_params(rng: jax.Array, vocab_size: int, num_classes: int, width: int = 64,
                layers: int = 2, max_len: int = 256):
  module = AttributeClassifier(vocab_size, num_classes, width=width, layers=layers,
                               max_len=max_len)
  return module.init(rng, jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), bool))['params']


def num_classes_of(params) -> int:
  """The number of classes a classifier tree was trained with."""
  return int(params['out']['bias'].shape[0])


def log_probs(params, inputs: jax.Array, valid_BxT: jax.Array) -> jax.Array:
  """[B, C] float32 log p(y | inputs) of the classifier tree `params` (sizes read from it)."""
  V = params['embed'].shape[0]
  module = AttributeClassifier(V, num_classes_of(params), width=params['embed'].shape[1],
                               layers=sum(k.startswith('block') for k in params),
                               max_len=params['pos_embed'].shape[0])
  return jax.nn.log_softmax(module.apply({'params': params}, inputs, valid_BxT), axis=-1)
