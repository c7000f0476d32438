"""Masked-input multi-token prediction ("Your LLM Knows the Future", arXiv 2507.11851): trains
params['mask_mtp'] (models/mask_mtp.py: mask embeddings, gated LoRA, sampler) on a frozen
target.

One forward per batch over [row; A mask blocks]: row b's tokens x_0 .. x_{T-1} at positions
0 .. T-1, then for each of A random anchors a (0 <= a <= T - 2) k masks at positions
a + 1 .. a + k. An explicit attention mask lets the row attend causally to itself only (its
outputs are the frozen target's) and mask j of anchor a to x_0 .. x_a and masks 1 .. j of its
own block: exactly what decoding feeds (k masks after the last real token). Mask j predicts
x_{a+j+1}, the token the ordinary position a + j predicts. Losses, over masks whose target
lies in the row:

  mtp      CE of the mask's own logits (the target's LM head on its final hidden state)
  sampler  CE of the sampler head on [that hidden state; embedding of x_{a+j}] (teacher forced)
  latent   mean squared distance of the mask's final hidden state to the stop-gradient final
           hidden state of ordinary position a + j (the latent-consistency loss)

`spec.loss='kl'` replaces the CEs by KL(p_target(. | x_0..x_{a+j}) || q). Metrics: each
depth's sampler agreement with the target's argmax (`agree{j}`, the greedy acceptance of a
chain whose earlier drafts were right) and accuracy against the data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from models import heads as heads_lib
from models import mask_mtp as mask_lib
from models import transformer as transformer_lib
from training.objectives.registry import Objective, register
from training.objectives.spec_heads import load_target, spec_settings


def layout(T: int, anchors_BxA: jax.Array, K: int) -> dict[str, jax.Array]:
  """Inputs of the training forward over a row of T tokens and its mask blocks (L = T + A K).

  Returns positions_BxL, gate_BxL (True at masks), index_BxL (mask j -> j - 1),
  mask_BxLxL (attention), target_BxAxK (index into the row's T + 1 tokens of each mask's
  target, a + j + 1) and valid_BxAxK (the target lies in the row).
  """
  B, A = anchors_BxA.shape
  j_K = jnp.arange(1, K + 1, dtype=jnp.int32)
  mpos_BxAxK = anchors_BxA[:, :, None] + j_K[None, None]
  L = T + A * K
  positions = jnp.concatenate([jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T)),
                               mpos_BxAxK.reshape(B, A * K)], 1)
  is_mask_L = jnp.arange(L) >= T
  gate = jnp.broadcast_to(is_mask_L[None], (B, L))
  index = jnp.broadcast_to(jnp.concatenate([jnp.zeros((T,), jnp.int32),
                                            jnp.tile(j_K - 1, A)])[None], (B, L))
  # Last ordinary index each query sees: itself (row) or its anchor (mask).
  limit_BxL = jnp.concatenate([jnp.broadcast_to(jnp.arange(T), (B, T)),
                               jnp.repeat(anchors_BxA, K, axis=1)], 1)
  block_L = jnp.concatenate([jnp.full((T,), -1), jnp.repeat(jnp.arange(A), K)])
  idx_L = jnp.arange(L)
  see_row = (~is_mask_L)[None, None, :] & (idx_L[None, None, :] <= limit_BxL[:, :, None])
  see_block = (is_mask_L[:, None] & is_mask_L[None, :] & (block_L[:, None] == block_L[None, :])
               & (idx_L[None, :] <= idx_L[:, None]))
  mask = see_row | see_block[None]
  target = mpos_BxAxK + 1
  return dict(positions_BxL=positions, gate_BxL=gate, index_BxL=index, mask_BxLxL=mask,
              target_BxAxK=target, valid_BxAxK=target <= T)


def _divergence(logits_NxV, tgt_N, logp_target_NxV, kind: str):
  logq = jax.nn.log_softmax(logits_NxV.astype(jnp.float32), -1)
  if kind == 'kl':
    return jnp.sum(jnp.exp(logp_target_NxV) * (logp_target_NxV - logq), -1)
  return -jnp.take_along_axis(logq, tgt_N[..., None], -1)[..., 0]


@register('mask_mtp')
def mask_mtp(model: transformer_lib.Transformer,
             config: ml_collections.ConfigDict) -> Objective:
  """See module docstring."""
  s = spec_settings(config)
  cfg = model.cfg
  K, A, R = int(s.heads), int(s.anchors), int(s.lora_rank)
  if s.loss not in ('ce', 'kl'):
    raise ValueError(f"spec.loss must be 'ce' or 'kl', got {s.loss!r}.")
  T = config.data.seq_len
  if not 1 <= A <= T - 1:
    raise ValueError(f'spec.anchors={A} must be in [1, seq_len - 1 = {T - 1}].')
  if not s.target_workdir:
    raise ValueError('spec.target_workdir must name the trained target run (e.g. '
                     'runs/spec/target).')
  sampler = mask_lib.MaskSampler(cfg)

  def init_extras(rng):
    return {mask_lib.MASK_MTP: mask_lib.init_params(cfg, K, R, rng)}

  def loss_fn(params, batch, rng):
    tokens = batch['tokens']
    B, T1 = tokens.shape
    T = T1 - 1
    base = jax.lax.stop_gradient(params['model'])
    tree = params[mask_lib.MASK_MTP]
    anchors = jax.vmap(lambda k: jax.random.permutation(k, T - 1)[:A])(
        jax.random.split(rng, B)).astype(jnp.int32)
    lay = layout(T, anchors, K)
    inputs = jnp.concatenate([tokens[:, :T], jnp.zeros((B, A * K), tokens.dtype)], 1)
    lora = mask_lib.gated_lora(tree, lay['gate_BxL'], lay['index_BxL'])
    out = model.apply({'params': base}, inputs, lay['positions_BxL'],
                      attn_mask=lay['mask_BxLxL'], lora=lora)
    D = cfg.d_model
    h_mask = out.last_hidden_BxTxD[:, T:].reshape(B, A * K, D)
    logits_mask = out.logits_BxTxV[:, T:].reshape(B, A * K, -1)
    tgt_idx = jnp.minimum(lay['target_BxAxK'].reshape(B, A * K), T)
    prev_idx = tgt_idx - 1  # the ordinary position predicting the same token
    valid = lay['valid_BxAxK'].reshape(B, A * K).astype(jnp.float32)
    tgt = jnp.take_along_axis(tokens, tgt_idx, 1)
    prev = jnp.take_along_axis(tokens, prev_idx, 1)
    base_logits = jax.lax.stop_gradient(jnp.take_along_axis(
        out.logits_BxTxV[:, :T], prev_idx[..., None], 1))
    base_h = jax.lax.stop_gradient(jnp.take_along_axis(
        out.last_hidden_BxTxD[:, :T], prev_idx[..., None], 1))
    logp_target = jax.nn.log_softmax(base_logits.astype(jnp.float32), -1)
    in_emb = heads_lib.input_embedding(base)
    out_emb = heads_lib.output_embedding(base, cfg)
    logits_s = sampler.apply({'params': tree['sampler']}, h_mask, prev, in_emb, out_emb)
    n = jnp.maximum(valid.sum(), 1.0)
    mean = lambda x: (x * valid).sum() / n
    mtp = mean(_divergence(logits_mask, tgt, logp_target, s.loss))
    samp = mean(_divergence(logits_s, tgt, logp_target, s.loss))
    latent = mean(jnp.mean(jnp.square(h_mask.astype(jnp.float32)
                                      - base_h.astype(jnp.float32)), -1))
    loss = s.mtp_weight * mtp + s.sampler_weight * samp + s.latent_weight * latent
    metrics = {'loss': loss, 'mtp_loss': mtp, 'sampler_loss': samp, 'latent_loss': latent}
    top_s = jnp.argmax(logits_s, -1).reshape(B, A, K)
    top_t = jnp.argmax(base_logits, -1).reshape(B, A, K)
    v = valid.reshape(B, A, K)
    for j in range(K):
      nj = jnp.maximum(v[:, :, j].sum(), 1.0)
      metrics[f'agree{j + 1}'] = ((top_s[:, :, j] == top_t[:, :, j]) * v[:, :, j]).sum() / nj
      metrics[f'acc{j + 1}'] = ((top_s[:, :, j] == tgt.reshape(B, A, K)[:, :, j])
                                * v[:, :, j]).sum() / nj
    return loss, metrics

  return Objective(loss_fn=loss_fn, init_extras=init_extras, frozen=('model',),
                   init_model_params=lambda: load_target(s.target_workdir, model).params)
