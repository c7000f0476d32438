"""Classifier guidance for masked/block diffusion decoding (CtrlDiff's controllable
generation, Huang et al. 2025; the discrete form of Nisonoff et al. 2024 and Schiff et al.
2024, "Simple Guidance Mechanisms for Discrete Diffusion Models").

For a masked position i of the current block and a candidate token v, the guided
distribution is the product rule

    p_guided(x_i = v | x)  ∝  p(x_i = v | x) · p(y | x[i <- v])^γ

where p is the diffusion model's prediction (SUBS: never <mask>), p(y | ·) the attribute
classifier (models/attribute.py, the run's 'attribute' tree) on the current sequence with
position i set to v and every other undecided position still masked, y the target class and
γ = `guidance_scale` (0 = off, 1 = the posterior p(x_i | x, y), > 1 sharper). Dividing by
p(y | x) (the classifier on the sequence as it is) changes nothing after normalisation, so
the guided logits are  logits + γ · Δ  with  Δ[i, v] = log p(y | x[i <- v]) - log p(y | x).
Two ways to get Δ:
  'exact'   for the `top_k` most likely candidates of each position, by running the
            classifier on every (position, candidate) sequence (B x M x K rows a step); other
            tokens get Δ = 0 (the classifier's view of the unfilled position: no information
            either way), so the guided distribution keeps the model's full support and γ = 0
            leaves the logits unchanged.
  'taylor'  the first-order approximation of Δ around the current one-hot input
            (Schiff et al.'s and Nisonoff et al.'s Taylor-approximated guidance): with
            g = ∂ log p(y | x) / ∂ onehot(x),  Δ[i, v] = g[i, v] - g[i, x_i] (x_i = <mask>);
            one forward and backward of the classifier per step, for every token of V.
Positions are guided independently (each one against the others still masked), as in those
papers; the tokens committed together in one step are not jointly guided. Lossy: the output
follows the guided distribution, not the model's.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from models import attribute as attr_lib
import pallas_kernels.common as kernel_common

MODES = ('exact', 'taylor')


def check(scale: float, mode: str, top_k: int, who: str) -> None:
  """ValueError with a clear message for an impossible guidance setting."""
  if not scale >= 0:
    raise ValueError(f'{who}: guidance_scale must be >= 0 (0 = off), got {scale}.')
  if mode not in MODES:
    raise ValueError(f'{who}: guidance must be one of {MODES}, got {mode!r}.')
  if top_k < 1:
    raise ValueError(f'{who}: guidance_top_k must be >= 1, got {top_k}.')


def check_classifier(params: dict[str, Any], target_class: int, who: str) -> None:
  """ValueError unless `params` holds the attribute classifier and `target_class` is one of
  its classes (called when guidance_scale > 0)."""
  if attr_lib.HEAD not in params:
    raise ValueError(f"{who}: guidance_scale > 0 needs the attribute classifier (the run's "
                     f"{attr_lib.HEAD!r} tree): train one with `python train.py "
                     f"--config=configs/ctrlguide.py:TASK --workdir=RUN` and decode RUN, or "
                     f"attach it with Workbench.add_heads({attr_lib.HEAD!r}, RUN).")
  C = attr_lib.num_classes_of(params[attr_lib.HEAD])
  if not 0 <= target_class < C:
    raise ValueError(f'{who}: guidance_class={target_class} is not a class of the attribute '
                     f'classifier (it has {C} classes: 0..{C - 1}).')


def delta_exact(cls_params: Any, seq_BxL: jax.Array, valid_BxL: jax.Array,
                logits_BxMxV: jax.Array, idx_BxM: jax.Array, target_class: int, top_k: int
                ) -> jax.Array:
  """Δ [B, M, V] (float32): log p(y | x[idx_m <- v]) - log p(y | x) for the top_k tokens v of
  each position's logits (the mask token excluded by the caller's -inf), 0 for the others.

  seq_BxL: the current sequence (masks where undecided); valid_BxL: which entries are real
  (not padding); idx_BxM: each guided position's index into seq.
  """
  B, M, V = logits_BxMxV.shape
  L = seq_BxL.shape[1]
  K = min(top_k, V)
  cand_BxMxK = kernel_common.top_k(logits_BxMxV, K)[1].astype(seq_BxL.dtype)
  base = attr_lib.log_probs(cls_params, seq_BxL, valid_BxL)[:, target_class]
  filled = jnp.broadcast_to(seq_BxL[:, None, None, :], (B, M, K, L))
  hit = jnp.arange(L)[None, None, None, :] == idx_BxM[:, :, None, None]
  filled = jnp.where(hit, cand_BxMxK[..., None], filled)
  valid = jnp.broadcast_to(valid_BxL[:, None, None, :], (B, M, K, L))
  lp = attr_lib.log_probs(cls_params, filled.reshape(B * M * K, L),
                          valid.reshape(B * M * K, L))[:, target_class].reshape(B, M, K)
  d_BxMxK = lp - base[:, None, None]
  b = jnp.arange(B)[:, None, None]
  m = jnp.arange(M)[None, :, None]
  return jnp.zeros((B, M, V), jnp.float32).at[b, m, cand_BxMxK].set(d_BxMxK)


def delta_taylor(cls_params: Any, seq_BxL: jax.Array, valid_BxL: jax.Array,
                 idx_BxM: jax.Array, target_class: int) -> jax.Array:
  """Δ [B, M, V] (float32): the first-order estimate g[idx, v] - g[idx, seq[idx]] with g the
  gradient of log p(y | x) with respect to the one-hot sequence."""
  V = cls_params['embed'].shape[0]
  onehot = jax.nn.one_hot(seq_BxL, V, dtype=jnp.float32)
  f = lambda oh: jnp.sum(attr_lib.log_probs(cls_params, oh, valid_BxL)[:, target_class])
  g_BxLxV = jax.grad(f)(onehot)
  g_BxMxV = jnp.take_along_axis(g_BxLxV, idx_BxM[..., None], axis=1)
  cur = jnp.take_along_axis(seq_BxL, idx_BxM, axis=1)
  return g_BxMxV - jnp.take_along_axis(g_BxMxV, cur[..., None], axis=2)


def guided_logits(params: dict[str, Any], logits_BxMxV: jax.Array, seq_BxL: jax.Array,
                  valid_BxL: jax.Array, idx_BxM: jax.Array, *, scale: float,
                  target_class: int, mode: str = 'exact', top_k: int = 8,
                  mask_id: int | None = None) -> jax.Array:
  """logits + scale · Δ (module docstring), float32 [B, M, V]; the logits unchanged (the very
  same array) when scale == 0. `mask_id`: a token never proposed (its logit set to -inf
  first, as `canvas.token_stats` does)."""
  if scale == 0:
    return logits_BxMxV
  logits = logits_BxMxV.astype(jnp.float32)
  if mask_id is not None:
    logits = logits.at[..., mask_id].set(-jnp.inf)
  cls_params = params[attr_lib.HEAD]
  L = seq_BxL.shape[1]
  idx = jnp.clip(idx_BxM, 0, L - 1)
  if mode == 'exact':
    delta = delta_exact(cls_params, seq_BxL, valid_BxL, logits, idx, target_class, top_k)
  else:
    delta = delta_taylor(cls_params, seq_BxL, valid_BxL, idx, target_class)
  return logits + scale * delta
