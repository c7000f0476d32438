"""CtrlDiff's block-size predictor, fitted on labels from the frozen block diffusion model.

The base: a block diffusion run trained over several block sizes (configs/diffusion_tasks.py
kind ctrldiff, `diffusion.block_sizes`), loaded from `ctrldiff.diffusion_workdir` and frozen.
The trained tree: `models/block_size.BlockSizePredictor` (params['ctrldiff']).

Labels. For a block boundary s (the first undecided position) and a size b, the label is 1 iff
one denoising step of the aligned b-block holding s -- every answer position of
[s, s // b * b + b) masked, everything before s clean -- predicts all of them right (argmax,
SUBS), i.e. the 'ctrldiff' decoder with tokens_per_step=0 would commit the reference there.
Per train step and size b every row draws one in-block offset o (s = j * b + o for every
aligned block j) and two forwards of the frozen model give, for all blocks at once:
  * the labels: a two-stream forward over aligned b-blocks whose noised copy masks the answer
    positions at in-block offset >= o;
  * the features: a clean forward over blocks that end at the boundaries (blocks of b shifted
    by o), whose final hidden state at s - 1 is what the decoder's boundary forward reads.
The predictor's output for b is fitted by binary cross-entropy on the boundaries inside the
answer whose block still holds an answer position. (An approximation of the decoder's
situation: there the blocks before s have the sizes chosen so far, here they all have size
b. The paper trains its size policy by reinforcement learning; these supervised labels from
the model itself are a cheaper stand-in.)
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from models import block_size as bs_lib
from models import kind as kind_lib
from models import transformer as transformer_lib
from training.objectives import block_diffusion as bd
from training.objectives import diffusion_lib as lib
from training.objectives.registry import Objective, register
from workdir import loading


def size_labels(model: transformer_lib.Transformer, params, tokens_BxT: jax.Array,
                maskable_BxT: jax.Array, b: int, offset_B: jax.Array, mask_id: int,
                shift: bool) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """For blocks j of size b and boundaries s_j = j * b + offset: (label_BxJ float, valid_BxJ,
  s_BxJ, feature_BxJxD). Shapes: tokens/maskable [B, T]; J = ceil(T / b)."""
  B, T = tokens_BxT.shape
  J = -(-T // b)
  t_T = jnp.arange(T)
  masked = maskable_BxT & ((t_T % b)[None, :] >= offset_B[:, None])
  z = jnp.where(masked, mask_id, tokens_BxT)
  blk = jnp.broadcast_to(t_T // b, (B, T))
  positions = jnp.broadcast_to(jnp.concatenate([t_T, t_T]), (B, 2 * T))
  out = model.apply({'params': params}, jnp.concatenate([z, tokens_BxT], axis=1), positions,
                    attn_mask=bd.two_stream_mask_from_blocks(blk))
  if shift:
    logits = jnp.pad(bd.shifted_two_stream_logits(out.logits_BxTxV, blk),
                     ((0, 0), (1, 0), (0, 0)))  # position 0 is never masked
  else:
    logits = out.logits_BxTxV[:, :T]
  pred = jnp.argmax(lib.subs_log_probs(logits, mask_id), axis=-1)
  wrong = masked & (pred != tokens_BxT)
  pad = J * b - T
  per_block = lambda x: jnp.pad(x, ((0, 0), (0, pad))).reshape(B, J, b)
  label = ~jnp.any(per_block(wrong), axis=2)
  s_BxJ = jnp.arange(J)[None, :] * b + offset_B[:, None]
  answer_start = jnp.argmax(maskable_BxT, axis=1)
  valid = jnp.any(per_block(masked), axis=2) & (s_BxJ >= answer_start[:, None]) & (s_BxJ < T)
  # Features: clean tokens, blocks ending at the boundaries.
  blk_f = jnp.floor_divide(t_T[None, :] - offset_B[:, None], b)
  feat_out = model.apply({'params': params}, tokens_BxT, jnp.broadcast_to(t_T, (B, T)),
                         attn_mask=blk_f[:, None, :] <= blk_f[:, :, None])
  idx = jnp.clip(s_BxJ - 1, 0, T - 1)
  feat = jnp.take_along_axis(feat_out.last_hidden_BxTxD, idx[..., None], axis=1)
  return label.astype(jnp.float32), valid, s_BxJ, feat.astype(jnp.float32)


def predictor_loss(model: transformer_lib.Transformer, model_params, head_params,
                   tokens_BxT: jax.Array, maskable_BxT: jax.Array, rng: jax.Array,
                   sizes: Sequence[int], mask_id: int, shift: bool):
  """(loss, metrics): mean over sizes of the masked binary cross-entropy (module docstring)."""
  model_params = jax.lax.stop_gradient(model_params)
  head = bs_lib.BlockSizePredictor(len(sizes))
  B = tokens_BxT.shape[0]
  losses, metrics = [], {}
  for i, b in enumerate(sizes):
    offset = jax.random.randint(jax.random.fold_in(rng, b), (B,), 0, b)
    label, valid, s, feat = size_labels(model, model_params, tokens_BxT, maskable_BxT, b,
                                        offset, mask_id, shift)
    J = label.shape[1]
    logits = head.apply({'params': head_params}, feat.reshape(B * J, -1),
                        s.reshape(B * J))[:, i].reshape(B, J)
    bce = -(label * jax.nn.log_sigmoid(logits) + (1 - label) * jax.nn.log_sigmoid(-logits))
    n = jnp.maximum(jnp.sum(valid), 1)
    losses.append(jnp.sum(jnp.where(valid, bce, 0.0)) / n)
    metrics[f'positive_b{b}'] = jnp.sum(jnp.where(valid, label, 0.0)) / n
    metrics[f'accuracy_b{b}'] = jnp.sum(valid & ((logits > 0) == (label > 0.5))) / n
  loss = jnp.mean(jnp.stack(losses))
  return loss, dict(loss=loss, **metrics)


def ctrldiff_settings(config: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
  if config is None or 'ctrldiff' not in config:
    raise ValueError("Objective 'ctrldiff' reads a `ctrldiff` config section "
                     '(diffusion_workdir, sizes): use configs/ctrldiff.py.')
  c = config.ctrldiff
  bs_lib.parse_sizes(c.sizes)  # raises on a bad set
  return c


@register('ctrldiff')
def ctrldiff_objective(model: transformer_lib.Transformer,
                       config: ml_collections.ConfigDict) -> Objective:
  c = ctrldiff_settings(config)
  s = lib.settings(config)
  sizes = bs_lib.parse_sizes(c.sizes)
  if sizes[-1] > config.data.seq_len:
    raise ValueError(f'ctrldiff.sizes go up to {sizes[-1]}, longer than data.seq_len '
                     f'{config.data.seq_len}.')

  def load_base():
    if not c.diffusion_workdir:
      raise ValueError('ctrldiff.diffusion_workdir must name the trained block diffusion run.')
    loaded = loading.load_model(c.diffusion_workdir)
    if loaded.kind.attention != 'block_causal' or loaded.kind.mask_id < 0:
      raise ValueError(f'ctrldiff.diffusion_workdir={c.diffusion_workdir} holds a '
                       f'{loaded.kind.describe()} model; CtrlDiff needs block diffusion '
                       '(configs/diffusion_tasks.py:TASK,ctrldiff).')
    if loaded.kind.shift != s.shift:
      raise ValueError(f'diffusion.shift={s.shift} but the base run has shift='
                       f'{loaded.kind.shift}.')
    loading.require_same_model(model.cfg, loaded, f'ctrldiff.diffusion_workdir={c.diffusion_workdir}')
    return loaded.params

  def loss_fn(params, batch, rng):
    return predictor_loss(model, params['model'], params[bs_lib.HEAD], batch['tokens'],
                          lib.maskable(batch), rng, sizes, s.mask_id, s.shift)

  def init_extras(rng):
    return {bs_lib.HEAD: bs_lib.init_params(rng, model.cfg.d_model, len(sizes))}

  return Objective(loss_fn=loss_fn, eval_fn=loss_fn, init_extras=init_extras, frozen=('model',),
                   init_model_params=load_base,
                   kind=kind_lib.ModelKind(attention='block_causal', mask_id=s.mask_id,
                                           shift=s.shift, block_size=0),
                   **lib.data_hooks(config, s.mask_id))
