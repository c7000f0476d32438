"""S2D drafter: one sorted, nested draft model serves several targets (models/s2d.py).

Sub-model k (the draft's first k layers + its shared final norm and head) drafts through the
ordinary draft-model drafter (draft_model.py: chain, static or dynamic tree, its own cache);
`exit_layer` picks k (0 = every layer). Which sub-model suits a target is measured, not
assumed: `calibrate` runs each exit on a few calibration prompts and keeps the one with the
best expected speed

  score(k) = tau_k / (1 + drafts per step x c_k / c_target)

where tau_k is the measured tokens per target forward and c the per-token forward cost,
taken proportional to the parameters a token touches (the layers run plus the output head:
FLOPs, not a timing). A stronger target tends to accept more from deeper sub-models; a
weaker or cheaper one can prefer a shallow exit.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from decoding import base
from decoding.speculative import draft_model
from models import s2d as s2d_lib

DRAFT = draft_model.DRAFT


@dataclasses.dataclass(frozen=True)
class S2DDrafter(draft_model.DraftModelDrafter):
  """A draft-model drafter on sub-model `exit_layer` of a nested draft (0 = all layers)."""
  exit_layer: int = 0

  def _sub(self, env):
    """The env with the draft model and params cut to the sub-model."""
    draft = env.models[DRAFT]
    model, params = s2d_lib.sub_model(draft, env.params[DRAFT],
                                      self.exit_layer or draft.cfg.num_layers)
    extras = tuple((n, model if n == DRAFT else m) for n, m in env.models.extras)
    return dataclasses.replace(env, models=base.Models(env.models.target, extras),
                               params={**env.params, DRAFT: params})

  def check(self, models, params):
    super().check(models, params)
    L = models[DRAFT].cfg.num_layers
    if not 0 <= self.exit_layer <= L:
      raise ValueError(f'S2D exit_layer={self.exit_layer} must be in [1, {L}] (the draft has '
                       f'{L} layers; 0 = all of them).')

  def init(self, env, prefill, first_B):
    return super().init(self._sub(env), prefill, first_B)

  def propose(self, env, state, cache, root_B, base_B, active_B):
    return super().propose(self._sub(env), state, cache, root_B, base_B, active_B)

  def target_forward(self, env, state, cache, tree, base_B, active_B):
    return super().target_forward(self._sub(env), state, cache, tree, base_B, active_B)

  def update(self, env, state, step):
    return super().update(self._sub(env), state, step)


def token_cost(params: Any, num_layers: int) -> int:
  """Parameters one token touches in a forward of the first `num_layers` layers plus the
  output head (a FLOP proxy)."""
  size = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  head = params['lm_head'] if 'lm_head' in params else params['embed']['embedding']
  return sum(size(params[f'layer_{i}']) for i in range(num_layers)) + size(head)


def calibrate(decoder: base.Decoder, models: base.Models, params: dict[str, Any],
              prompts: Sequence[Sequence[int]], *, exits: Sequence[int] = (),
              max_new_tokens: int = 32, cache_size: int = 256, eos_id: int = -1,
              pad_id: int = 0) -> tuple[int, dict[int, dict[str, float]]]:
  """(the exit with the best score, {exit: {tau, drafts_per_step, cost_ratio, score}}):
  `decoder` (an 's2d' decoder) run with each exit on the calibration `prompts` (greedy
  acceptance does not depend on the exit's cost; the score does, see module docstring)."""
  from decoding import runner  # pylint: disable=g-import-not-at-top
  draft = models[DRAFT]
  L = draft.cfg.num_layers
  exits = tuple(exits) or tuple(range(1, L + 1))
  s2d_lib.parse_exits(exits, L)
  if not prompts:
    raise ValueError('S2D calibration needs at least one calibration prompt.')
  c_target = token_cost(params['target'], models.target.cfg.num_layers)
  table = {}
  for k in exits:
    dec = dataclasses.replace(decoder, exit_layer=k)
    _, stats = runner.run_decoder(dec, models, params, prompts, max_new_tokens=max_new_tokens,
                                  cache_size=cache_size, eos_id=eos_id, pad_id=pad_id)
    steps = max(stats.extra['spec_steps'], 1)
    drafts = (stats.other_forwards - len(prompts)) / steps  # draft calls per step
    ratio = token_cost(params[DRAFT], k) / c_target
    table[k] = dict(tau=stats.tau, drafts_per_step=drafts, cost_ratio=ratio,
                    score=stats.tau / (1 + drafts * ratio))
  best = max(table, key=lambda k: table[k]['score'])
  return best, table
