"""Parallel Prompt Decoding (PPD, Chen et al. 2024, arXiv 2405.18628): trained prompt tokens.

K prompt-token embeddings are appended after a token; prompt token i (0-based) sits at the
position after the previous one and its logits predict the token i + 2 places after the one
it follows (the token's own logits predict the next one). The base model is unchanged and
frozen; the embeddings are a training extra of the target's run (params['ppd'] =
{'prompts': [K, D]}).

Attention of the appended tokens (training and decoding alike): prompt token i attached to
token t sees t, everything t sees, and the prompt tokens 0 .. i attached to t; nothing sees a
prompt token but later prompt tokens of the same attachment (so the base's own outputs are
unchanged). One virtual token per prompt (the paper's m = 1, its fastest setting).

  layout(T, K)         positions offsets and the [T(1+K), T(1+K)] mask of a training row
  attach_mask(...)     the same rule for prompt tokens attached to the nodes of a token tree

Axis letters as everywhere: B batch, T tokens, K prompt tokens, D model width, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PPD = 'ppd'


def init_params(d_model: int, num_prompts: int, rng: jax.Array, std: float) -> dict[str, Any]:
  """{'prompts': [K, D]} drawn from N(0, std^2) (the model's init_std)."""
  if num_prompts < 1:
    raise ValueError(f'PPD needs at least one prompt token, got {num_prompts}.')
  return {'prompts': jax.random.normal(rng, (num_prompts, d_model)) * std}


def num_prompts(ppd_params: Any) -> int:
  return int(ppd_params['prompts'].shape[0])


def check_params(params: Any, who: str, hint: str) -> int:
  """K, the number of prompt tokens, or a ValueError naming `who` when params hold none."""
  if PPD not in params or 'prompts' not in params[PPD]:
    raise ValueError(f'{who} needs trained prompt tokens (params[{PPD!r}]) in the target run: '
                     f'{hint}.')
  return num_prompts(params[PPD])


def attach_mask(anc_BxNxN: jax.Array, num_prompts_: int) -> jax.Array:
  """[B, N(1+K), N(1+K)] bool: the local mask of N nodes (ancestor-or-self mask `anc`)
  followed by K prompt tokens per node (node n's prompt i at index N + n K + i)."""
  B, N, _ = anc_BxNxN.shape
  K = num_prompts_
  tri_KxK = jnp.tril(jnp.ones((K, K), bool))
  # Prompt (n, i) sees the nodes node n sees.
  p_see_nodes = jnp.repeat(anc_BxNxN, K, axis=1)  # [B, NK, N]
  # ... and prompts (n, j <= i).
  same_NKxNK = jnp.kron(jnp.eye(N, dtype=jnp.int32), tri_KxK.astype(jnp.int32)) > 0
  top = jnp.concatenate([anc_BxNxN, jnp.zeros((B, N, N * K), bool)], axis=2)
  bottom = jnp.concatenate([p_see_nodes, jnp.broadcast_to(same_NKxNK, (B, N * K, N * K))],
                           axis=2)
  return jnp.concatenate([top, bottom], axis=1)


def layout(T: int, K: int) -> tuple[np.ndarray, np.ndarray]:
  """A training row of T tokens with K prompt tokens attached to every token: (positions
  [T(1+K)], mask [T(1+K), T(1+K)]). Token t sits at position t; its prompt i at index
  T + t K + i and position t + 1 + i."""
  t = np.arange(T)
  pos = np.concatenate([t, (t[:, None] + 1 + np.arange(K)[None]).reshape(-1)])
  causal = np.tril(np.ones((T, T), bool))
  same = np.kron(np.eye(T, dtype=np.int32), np.tril(np.ones((K, K), np.int32))) > 0
  mask = np.block([[causal, np.zeros((T, T * K), bool)], [np.repeat(causal, K, axis=0), same]])
  return pos.astype(np.int32), mask


def embed_with_prompts(in_emb_VxD: jax.Array, tokens_BxT: jax.Array, prompts_KxD: jax.Array,
                       dtype: Any) -> jax.Array:
  """[B, T(1+K), D]: the tokens' embeddings, then K prompt embeddings per token."""
  B, T = tokens_BxT.shape
  K, D = prompts_KxD.shape
  x = jnp.take(in_emb_VxD, tokens_BxT, axis=0).astype(dtype)
  p = jnp.broadcast_to(prompts_KxD.astype(dtype)[None, None], (B, T, K, D)).reshape(B, T * K, D)
  return jnp.concatenate([x, p], axis=1)


def forward_with_prompts(model: Any, model_params: Any, prompts_KxD: jax.Array,
                         tokens_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One forward over rows of T tokens with K prompt tokens attached to every token
  (`layout`): (the base's logits [B, T, V], exactly its plain forward's; prompt logits
  [B, T, K, V], entry (t, i) predicting token t + 2 + i). `model` is a Transformer."""
  B, T = tokens_BxT.shape
  K = prompts_KxD.shape[0]
  pos, mask = layout(T, K)
  x = embed_with_prompts(model_params['embed']['embedding'], tokens_BxT, prompts_KxD,
                         model.cfg.compute_dtype)
  out = model.apply({'params': model_params}, None, jnp.broadcast_to(pos, (B, pos.size)),
                    attn_mask=jnp.asarray(mask)[None], inputs_embeds_BxTxD=x)
  logits = out.logits_BxTxV
  return logits[:, :T], logits[:, T:].reshape(B, T, K, logits.shape[-1])
