"""S2D's sorted, nested draft (Kavehzadeh et al. 2024, arXiv 2407.01955): one draft
Transformer whose first k layers, followed by its shared final norm and output head, form
sub-model k. SoFT training (training/objectives/s2d.py) makes every exit in a set (e.g. 1, 2
and 4 of 4 layers) a usable draft, so one draft serves several targets: each target takes
the sub-model whose measured acceptance pays best (decoding/speculative/s2d.py).

  sub_model(model, params, k) -> (Transformer of k layers, its params)   a plain draft model
  exit_logits(model, params, hidden_BxTxD) -> logits [B, T, V]           the shared head on the
                                                                          residual stream

Sub-model k is exactly the full draft truncated after layer k (the same weights, the same
cache layout for its k layers), so it drafts through the ordinary draft-model drafter.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax

from models import heads as heads_lib
from models import layers
from models import transformer as transformer_lib


def parse_exits(spec: str | Sequence[int], num_layers: int) -> tuple[int, ...]:
  """'1,2,4' or '1/2/4' (or a sequence) -> (1, 2, 4), sorted and checked; '' -> all layers."""
  if isinstance(spec, str):
    out = [int(s) for s in spec.replace('/', ',').split(',') if s.strip()]
  else:
    out = [int(i) for i in spec]
  out = sorted(set(out)) or list(range(1, num_layers + 1))
  for e in out:
    if not 1 <= e <= num_layers:
      raise ValueError(f'S2D exit {e} must be in [1, {num_layers}] (sub-model k runs the '
                       f'first k of the draft\'s {num_layers} layers).')
  return tuple(out)


def sub_model(model: transformer_lib.Transformer, params: Any, k: int
              ) -> tuple[transformer_lib.Transformer, Any]:
  """Sub-model k: the first k layers, the embedding, the final norm and the head."""
  cfg = model.cfg
  parse_exits((k,), cfg.num_layers)
  sub_cfg = dataclasses.replace(cfg, num_layers=k,
                                layer_types=tuple(cfg.layer_types[:k]) if cfg.layer_types
                                else cfg.layer_types)
  drop = {f'layer_{i}' for i in range(k, cfg.num_layers)}
  missing = {f'layer_{i}' for i in range(k)} - set(params)
  if missing:
    raise ValueError(f'The draft params lack {sorted(missing)}: is this an unrolled '
                     'Transformer of the draft\'s config?')
  return transformer_lib.Transformer(sub_cfg), {n: v for n, v in params.items()
                                                if n not in drop}


def exit_logits(model: transformer_lib.Transformer, params: Any,
                hidden_BxTxD: jax.Array) -> jax.Array:
  """float32 logits [B, T, V] of the shared final norm and head on a residual stream (an
  entry of `ModelOutput.hidden`)."""
  cfg = model.cfg
  x = heads_lib.final_norm(params, cfg, hidden_BxTxD)
  out = heads_lib.output_embedding(params, cfg)
  dt = cfg.compute_dtype
  return layers.mask_invalid_ids(
      jax.numpy.einsum('...D,VD->...V', x.astype(dt), out.astype(dt)), cfg)
