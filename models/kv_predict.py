"""KV Prediction (Horton et al. 2024, "KV Prediction for Improved Time to First Token").

A small auxiliary model reads the prompt and a learned predictor maps its activations to the
base model's KV cache, layer by layer; the base model then decodes from the predicted cache.
The prompt never runs through the base model, so time to first token is that of the
auxiliary model plus the predictor plus one base step.

  aux        the base model's embedding (shared, frozen) and its own `A` layers, initialised
             as copies of the base's first A layers (params['kv_predict']['aux']); A = 0 is
             the embedding alone.
  predictor  per base attention layer l: norm, then the key and value maps of an attention
             layer (D -> K x Dh each; biases and key norm as the base has them), read from the
             auxiliary residual stream entering aux layer min(l, A) (`source_layer`), RoPE at
             the token's position. Initialised from base layer l's own attention norm and key
             and value maps (params['kv_predict']['predict']['layer_l']).

With that initialisation the predicted keys and values of base layers 0 .. A equal the base's
(their inputs are the same residual streams), and layers above A read the top auxiliary
stream through their own maps. Training (`training/objectives/kv_predict.py`) tunes aux and
predictor with the base frozen; the base's decoding from an exact cache is untouched.

Differences from the paper: the predictor reads the auxiliary residual streams, where the
paper maps the auxiliary model's own keys and values with linear layers; and the auxiliary
model is the base's first layers (its width), where the paper also shrinks the width. Models
with recurrent (deltaproduct) layers are not supported (their state is not a per-token cache).

Axis letters: B batch, T tokens, D model width, K kv heads, Dh head width.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from models import cache as cache_lib
from models import config as config_lib
from models import layers
from models import transformer as transformer_lib

KV_PREDICT = 'kv_predict'


def check_model(cfg: config_lib.ModelConfig, aux_layers: int) -> None:
  """ValueError unless a KV predictor with `aux_layers` auxiliary layers fits `cfg`."""
  if config_lib.DELTAPRODUCT in cfg.layer_types:
    raise ValueError('KV prediction predicts attention caches; models with recurrent '
                     '(deltaproduct) layers are not supported.')
  if not 0 <= aux_layers <= cfg.num_layers:
    raise ValueError(f'kv_predict: the auxiliary model takes 0 .. {cfg.num_layers} layers (the '
                     f'base has {cfg.num_layers}), got {aux_layers}.')


def num_aux_layers(kvp: Any) -> int:
  """The number of auxiliary layers in trained params['kv_predict']."""
  return len(kvp.get('aux') or {})


def source_layer(layer: int, aux_layers: int) -> int:
  """Index into the auxiliary `hidden` streams (0 = embeddings, i = after aux layer i) that
  predicts base layer `layer`'s keys and values: the stream entering that layer while the
  auxiliary model has it, else its top stream."""
  return min(layer, aux_layers)


def init_params(cfg: config_lib.ModelConfig, base_params: Any, aux_layers: int) -> dict:
  """params['kv_predict'] from the base's weights (see the module docstring)."""
  check_model(cfg, aux_layers)
  aux = {f'layer_{i}': base_params[f'layer_{i}'] for i in range(aux_layers)}
  predict = {}
  for l in range(cfg.num_layers):
    attn = base_params[f'layer_{l}']['attn']
    p = {'norm': base_params[f'layer_{l}']['attn_norm']['scale'], 'k': attn['k'],
         'v': attn['v']}
    for name in ('k_bias', 'v_bias'):
      if name in attn:
        p[name] = attn[name]
    if 'k_norm' in attn:
      p['k_norm'] = attn['k_norm']['scale']
    predict[f'layer_{l}'] = p
  out = {'predict': predict, **({'aux': aux} if aux else {})}  # no empty tree in checkpoints
  return jax.tree.map(jnp.array, out)  # copies, not views


def aux_hidden(cfg: config_lib.ModelConfig, base_params: Any, kvp: Any, tokens_BxT: jax.Array,
               positions_BxT: jax.Array) -> tuple[jax.Array, ...]:
  """The auxiliary model's residual streams over the tokens: A + 1 arrays [B, T, D] (entering
  aux layer 0, then after each). Positions < 0 are padding (never attended to)."""
  A = num_aux_layers(kvp)
  if A == 0:  # the predictor reads the token embeddings alone
    return (layers.Embedder(cfg).apply({'params': base_params['embed']}, tokens_BxT),)
  params = {'embed': base_params['embed'], 'final_norm': base_params['final_norm'],
            **kvp['aux']}
  out = transformer_lib.Transformer(cfg).apply(
      {'params': params}, tokens_BxT, positions_BxT, layer_range=(0, A), return_hidden=True)
  return out.hidden


def predict_layer(cfg: config_lib.ModelConfig, p: Any, x_BxTxD: jax.Array,
                  positions_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(keys with RoPE, values), each [B, T, K, Dh], of one base layer from a residual stream
  (computed as `models.attention.Attention` computes them)."""
  dt = cfg.compute_dtype
  norm = lambda scale, axis, y: layers.RMSNorm(cfg.norm_eps, axis, cfg.weight_dtype).apply(
      {'params': {'scale': scale}}, y)
  x = norm(p['norm'], 'embed', x_BxTxD).astype(dt)
  k = jnp.einsum('BTD,DKd->BTKd', x, p['k'].astype(dt))
  v = jnp.einsum('BTD,DKd->BTKd', x, p['v'].astype(dt))
  if 'k_bias' in p:
    k, v = k + p['k_bias'].astype(dt), v + p['v_bias'].astype(dt)
  if 'k_norm' in p:
    k = norm(p['k_norm'], 'head_dim', k)
  return layers.rope(k, positions_BxT, cfg.rope_theta, cfg.rope_scaling), v


def predict_kv(cfg: config_lib.ModelConfig, base_params: Any, kvp: Any, tokens_BxT: jax.Array,
               positions_BxT: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
  """Predicted (keys, values) [B, T, K, Dh] of every base layer for the tokens."""
  check_model(cfg, num_aux_layers(kvp))
  hidden = aux_hidden(cfg, base_params, kvp, tokens_BxT, positions_BxT)
  A = num_aux_layers(kvp)
  return [predict_layer(cfg, kvp['predict'][f'layer_{l}'], hidden[source_layer(l, A)],
                        positions_BxT) for l in range(cfg.num_layers)]


def exact_kv(model: transformer_lib.Transformer, base_params: Any, tokens_BxT: jax.Array,
             positions_BxT: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
  """The base model's own (keys, values) of every layer (what `predict_kv` approximates):
  `predict_layer` with the base's weights on the base's residual streams."""
  cfg = model.cfg
  hidden = model.apply({'params': base_params}, tokens_BxT, positions_BxT,
                       return_hidden=True).hidden
  own = init_params(cfg, base_params, 1)['predict']
  return [predict_layer(cfg, own[f'layer_{l}'], hidden[l], positions_BxT)
          for l in range(cfg.num_layers)]


def write_cache(cache: cache_lib.Cache, kv: list[tuple[jax.Array, jax.Array]],
                positions_BxT: jax.Array, count_B: jax.Array) -> cache_lib.Cache:
  """`cache` with the first count_B[b] tokens of each row written at slots = positions (the
  rest, and padding, dropped); lengths become count_B."""
  T = positions_BxT.shape[1]
  keep_BxT = (jnp.arange(T)[None] < count_B[:, None]) & (positions_BxT >= 0)
  slots_BxT, key_pos_BxS, _ = cache.begin_write(jnp.where(keep_BxT, positions_BxT, -1),
                                                jnp.where(keep_BxT, positions_BxT, -1))
  new_layers = tuple(cache.layer(i).write(k, v, slots_BxT) for i, (k, v) in enumerate(kv))
  return cache.end_write(new_layers, key_pos_BxS, slots_BxT)
