"""HAMburger (Liu & Zhang 2025, "HAMburger: Accelerating LLM Inference via Token Smashing").

A base decoder-only model is wrapped so that one base forward, and one KV-cache entry, serves
a *group* (a "step") of 1 .. k tokens:

  compose    the compositional embedder: the tokens t_1 .. t_m of the step just produced
             (m <= k) become ONE input vector for the base,
               e = E(t_m) + sum_{j=1}^{m-1} E(t_{m-j}) @ W_j          (W_j [D, D], init 0)
             so a single token is exactly the base's plain embedding E(t) (params
             ['hamburger']['compose']['offsets'] [k-1, D, D]).
  positions  the base's entry for a step sits at the token index of the step's LAST token
             (RoPE sees token distances as in pretraining) and at the next cache slot; slots
             advance by one per step ("positions are not slots", DESIGN.md).
  micro      the micro-step decoder: from the base's output at the entry (the residual
             stream after the last layer, h [D]) it produces the next step's tokens. Token 1
             is the base's own head on h (exactly what AR would sample); tokens 2 .. k come
             from one transformer block (a copy of the base's last layer, `micro/layer_0`)
             run causally over [in_proj(h), E(t_1), .., E(t_{k-1})] at micro positions
             0 .. k-1 with the base's final norm and output head; at micro position i
             (having read t_i) a stop head (`micro/stop_w` [D], `stop_b`) scores whether
             token i + 1 still belongs to the step. The decoder stops a step at the first
             continue probability below its threshold (or at k tokens).

So a model with every step of one token is the base itself (the same embedding, positions,
slots and head): with max_tokens=1 the `hamburger` decoder is `ar` on the wrapped base token
for token. Generation with longer steps trusts the micro decoder's tokens without
verification (lossy). Prompts are prefilled one token per entry, as by the base.

Two compositional embedders (`init_params(..., embedder=)`, `hamburger.embedder` in
configs/hamburger.py; `compose` tells them apart by their params):

  'linear'           the sum of per-offset linear maps above (the default).
  'cross_attention'  the paper's form: the mean of the step's token embeddings queries the
                     tokens' embeddings plus learned in-step position embeddings,
                       e_i = E(t_i) + P_i,   a = softmax_i((mean E) Wq . e_i Wk / sqrt(D)),
                       e   = mean E + (sum_i a_i e_i Wv) Wo        (m >= 2; Wo init 0)
                     and a one-token step is E(t) exactly (params ['hamburger']['compose']
                     'pos' [k, D] (init 0), 'wq', 'wk', 'wv' [D, D] (init identity), 'wo'
                     [D, D] (init 0)). At initialisation a longer step is the mean of its
                     embeddings.

Differences from the paper: the default embedder is the linear one (the cross-attention one
is the paper's, one head, no MLP after it); the step boundary is a binary stop head (the
paper emits an end-of-step token); the micro decoder has one layer without its own KV cache (it re-reads
its <= k inputs at each micro step). Models with recurrent (deltaproduct) layers are not
supported.

Axis letters: B batch, M steps (entries), K tokens per step (k), D model width, V vocab.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from models import config as config_lib
from models import layers
from models import transformer as transformer_lib

HAMBURGER = 'hamburger'


def check_model(cfg: config_lib.ModelConfig, k: int) -> None:
  """ValueError unless a HAMburger wrapper with steps of up to `k` tokens fits `cfg`."""
  if config_lib.DELTAPRODUCT in cfg.layer_types:
    raise ValueError('hamburger: models with recurrent (deltaproduct) layers are not '
                     'supported (an entry per step needs an attention cache).')
  if not 2 <= k <= 16:
    raise ValueError(f'hamburger: k (the most tokens per step) must be in 2 .. 16, got {k}.')


EMBEDDERS = ('linear', 'cross_attention')


def embedder_kind(hb: Any) -> str:
  """'linear' or 'cross_attention': which compositional embedder params['hamburger'] holds."""
  return 'cross_attention' if 'pos' in hb['compose'] else 'linear'


def max_tokens(hb: Any) -> int:
  """k, the most tokens per step trained params['hamburger'] were built for."""
  if embedder_kind(hb) == 'cross_attention':
    return int(hb['compose']['pos'].shape[0])
  return int(hb['compose']['offsets'].shape[0]) + 1


def micro_config(cfg: config_lib.ModelConfig) -> config_lib.ModelConfig:
  """The micro decoder's model config: the base's, with one attention layer."""
  return dataclasses.replace(cfg, num_layers=1, layer_types=(config_lib.ATTENTION,))


def init_params(cfg: config_lib.ModelConfig, base_params: Any, k: int,
                embedder: str = 'linear') -> dict:
  """params['hamburger'] from the base's weights (see the module docstring)."""
  check_model(cfg, k)
  if embedder not in EMBEDDERS:
    raise ValueError(f'hamburger: embedder must be one of {EMBEDDERS}, got {embedder!r}.')
  D = cfg.d_model
  wd = cfg.weight_dtype
  last = base_params[f'layer_{cfg.num_layers - 1}']
  if embedder == 'linear':
    comp = {'offsets': jnp.zeros((k - 1, D, D), wd)}
  else:
    comp = {'pos': jnp.zeros((k, D), wd), 'wq': jnp.eye(D, dtype=wd),
            'wk': jnp.eye(D, dtype=wd), 'wv': jnp.eye(D, dtype=wd), 'wo': jnp.zeros((D, D), wd)}
  out = {'compose': comp,
         'micro': {'layer_0': last, 'in_proj': jnp.eye(D, dtype=cfg.weight_dtype),
                   'stop_w': jnp.zeros((D,), cfg.weight_dtype),
                   'stop_b': jnp.zeros((), cfg.weight_dtype)}}
  return jax.tree.map(jnp.array, out)  # copies, not views


def embed(cfg: config_lib.ModelConfig, base_params: Any, tokens: jax.Array) -> jax.Array:
  """The base's token embedding E(tokens) [..., D]."""
  return layers.Embedder(cfg).apply({'params': base_params['embed']}, tokens)


def compose(cfg: config_lib.ModelConfig, base_params: Any, hb: Any, group_xK: jax.Array,
            count_x: jax.Array) -> jax.Array:
  """One input vector [..., D] per step from its tokens group[..., :count] (count >= 1; the
  rest of the K columns is ignored): E(last) + sum_j E(last - j) @ W_j."""
  K = group_xK.shape[-1]
  if K > max_tokens(hb):
    raise ValueError(f'hamburger: steps of {K} tokens, but the embedder was built for at most '
                     f'{max_tokens(hb)}.')
  if embedder_kind(hb) == 'cross_attention':
    return _compose_cross_attention(cfg, base_params, hb['compose'], group_xK, count_x)
  W = hb['compose']['offsets']
  last_x = jnp.maximum(count_x, 1) - 1
  e_xKxD = embed(cfg, base_params, group_xK)
  take = lambda i_x: jnp.take_along_axis(e_xKxD, jnp.clip(i_x, 0, K - 1)[..., None, None],
                                         axis=-2)[..., 0, :]
  out = take(last_x)
  if K > 1:
    j = jnp.arange(1, K)
    idx_xJ = last_x[..., None] - j
    prev_xJxD = jnp.take_along_axis(e_xKxD, jnp.clip(idx_xJ, 0, K - 1)[..., None], axis=-2)
    prev_xJxD = jnp.where((idx_xJ >= 0)[..., None], prev_xJxD, 0)
    dt = cfg.compute_dtype
    out = out + jnp.einsum('...JD,JDE->...E', prev_xJxD.astype(dt),
                           W[:K - 1].astype(dt))
  return out


def _compose_cross_attention(cfg: config_lib.ModelConfig, base_params: Any, cp: Any,
                             group_xK: jax.Array, count_x: jax.Array) -> jax.Array:
  """The paper's embedder (module docstring): [..., D]; a one-token step is E(t) exactly."""
  K = group_xK.shape[-1]
  dt = cfg.compute_dtype
  count_x = jnp.maximum(count_x, 1)
  e_xKxD = embed(cfg, base_params, group_xK).astype(dt)
  in_step_xK = jnp.arange(K) < count_x[..., None]
  w_xK = in_step_xK.astype(dt)
  mean_xD = jnp.einsum('...K,...KD->...D', w_xK, e_xKxD) / count_x[..., None].astype(dt)
  kv_xKxD = e_xKxD + cp['pos'][:K].astype(dt)
  q_xD = mean_xD @ cp['wq'].astype(dt)
  k_xKxD = kv_xKxD @ cp['wk'].astype(dt)
  v_xKxD = kv_xKxD @ cp['wv'].astype(dt)
  scores = jnp.einsum('...D,...KD->...K', q_xD, k_xKxD).astype(jnp.float32)
  scores = jnp.where(in_step_xK, scores / jnp.sqrt(jnp.float32(cfg.d_model)), -1e30)
  a_xK = jax.nn.softmax(scores, axis=-1).astype(dt)
  out_xD = mean_xD + jnp.einsum('...K,...KD->...D', a_xK, v_xKxD) @ cp['wo'].astype(dt)
  return jnp.where((count_x == 1)[..., None], e_xKxD[..., 0, :], out_xD)  # one token: E(t)


def micro_forward(cfg: config_lib.ModelConfig, base_params: Any, hb: Any, h_xD: jax.Array,
                  tokens_xJ: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The micro decoder over [in_proj(h), E(t_1), .., E(t_J)] (J + 1 micro positions).

  Returns (logits [..., J + 1, V], continue logits [..., J + 1]): at micro position i >= 1
  (having read t_i) the logits score token i + 1 of the step and the continue logit whether it
  belongs to the step; position 0 is the context slot (its outputs are not used: token 1 is
  the base's own head).
  """
  lead = h_xD.shape[:-1]
  J = tokens_xJ.shape[-1]
  D = cfg.d_model
  mp = hb['micro']
  dt = cfg.compute_dtype
  h = jnp.einsum('...D,DE->...E', h_xD.astype(dt), mp['in_proj'].astype(dt))
  x = jnp.concatenate([h[..., None, :], embed(cfg, base_params, tokens_xJ).astype(dt)], -2)
  x_NxTxD = x.reshape((-1, J + 1, D))
  N = x_NxTxD.shape[0]
  params = {'embed': base_params['embed'], 'final_norm': base_params['final_norm'],
            'layer_0': mp['layer_0']}
  if 'lm_head' in base_params:
    params['lm_head'] = base_params['lm_head']
  pos = jnp.broadcast_to(jnp.arange(J + 1, dtype=jnp.int32), (N, J + 1))
  out = transformer_lib.Transformer(micro_config(cfg)).apply(
      {'params': params}, None, pos, inputs_embeds_BxTxD=x_NxTxD)
  cont = (jnp.einsum('NTD,D->NT', out.last_hidden_BxTxD.astype(jnp.float32),
                     mp['stop_w'].astype(jnp.float32)) + mp['stop_b'].astype(jnp.float32))
  V = out.logits_BxTxV.shape[-1]
  return (out.logits_BxTxV.reshape(lead + (J + 1, V)), cont.reshape(lead + (J + 1,)))
