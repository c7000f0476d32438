"""SkipDecode (Del Corro et al. 2023): token-level early exit that keeps batches and the cache.

Lossy: the model is not run in full for generated tokens, so the output is not the AR
output; quality is reported next to speed (docs/skipdecode.md).

Every generated token runs the model's *top* layers only. The number of layers skipped is a
function of the generation step alone (the same for every row: the batch stays in lock-step)
and never decreases along the generation:

  skip(i) for the forward that produces generated token i   (i = 0 is prefill: skip 0)
  linear schedule: min_skip for i < warmup, then rising linearly to max_skip at i = length
  (0 = the last token of the budget), then constant; or an explicit `schedule` ('0/1/1/2':
  one entry per generated token, the last one repeated). The decode loop is one `while_loop`
  per phase of constant skip (the schedule's distinct values, in order), each with a static
  layer range, run one after the other (fixed shapes, no host sync).

A token that skips layers 0 .. s-1 enters layer s with its embedding. Because skips never
decrease, every layer a token runs was run by every earlier token, so the keys and values it
attends to are all in the cache, and nothing is ever recomputed; the entries a token skips
are never written and never read. The prompt runs all layers (prefill).

`skip_from='top'` runs the same schedule as plain early exit instead (LayerSkip/CALM-style:
the token runs layers 0 .. L-s-1 and the head reads the stream after them; again every layer
it runs was run by every earlier token): the comparison the SkipDecode paper makes.

`h2o=BUDGET:recent=R` decodes through the H2O evicting cache (`decoding/h2o.py`) as well: a
reused slot keeps the evicted token's entries in the layers the new token skips, and no later
token reads them (it skips those layers too).

Training: `configs/skipdecode.py` fine-tunes an AR run with random non-decreasing skip
profiles (`training/objectives/skipdecode.py`), using the model's `skip_layers_BxT`, which
runs one sequence exactly as this decoder runs it token by token.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from decoding import base
from decoding import h2o as h2o_lib
from decoding import registry
from decoding import sampling as sampling_lib
from models import cache as cache_lib
from models import config as config_lib
from models import heads as heads_lib


def linear_schedule(n: int, *, min_skip: int, max_skip: int, warmup: int, length: int
                    ) -> np.ndarray:
  """Layers skipped by the forward producing generated token i, i = 0 .. n-1 (0 at i = 0)."""
  i = np.arange(n)
  span = max(length - warmup, 1)
  frac = np.clip((i - warmup) / span, 0.0, 1.0)
  skip = min_skip + np.floor((max_skip - min_skip) * frac + 1e-9).astype(np.int64)
  skip[0] = 0
  return skip


def parse_schedule(text: str, n: int) -> np.ndarray:
  """'0/1/1/2' (or commas): skips for generated tokens 0, 1, ...; the last entry repeats."""
  try:
    values = [int(x) for x in text.replace('/', ',').split(',') if x.strip()]
  except ValueError:
    raise ValueError(f'skipdecode: schedule {text!r} must be integers separated by "/".'
                     ) from None
  if not values:
    raise ValueError('skipdecode: schedule is empty.')
  values = values[:n] + [values[-1]] * max(n - len(values), 0)
  return np.asarray(values, np.int64)


def forward_skipping(model, params: Any, tokens_BxT: jax.Array, positions_BxT: jax.Array,
                     cache: Any, skip: int, skip_from: str = 'bottom',
                     policy: h2o_lib.H2OPolicy | None = None) -> tuple[Any, Any]:
  """One cached forward that skips `skip` (static) layers: the lowest ones (the embedding
  enters layer `skip`; SkipDecode) or the highest ones (the head reads the stream after layer
  L - skip - 1; early exit). Entries of skipped layers are not written. With an H2O `policy`
  the cache is its `H2OCache`. Returns (model output, the new cache)."""
  L = model.cfg.num_layers
  kwargs: dict[str, Any] = {}
  if skip and skip_from == 'top':
    kwargs['layer_range'] = (0, L - skip)
  elif skip:
    x_BxTxD = jnp.take(heads_lib.input_embedding(params), tokens_BxT, axis=0)
    tokens_BxT = None
    kwargs.update(inputs_embeds_BxTxD=x_BxTxD.astype(model.cfg.compute_dtype),
                  layer_range=(skip, L))
  if policy is not None:
    return policy.forward(model, params, tokens_BxT, positions_BxT, cache, **kwargs)
  out = model.apply({'params': params}, tokens_BxT, positions_BxT, cache=cache, **kwargs)
  return out, out.cache


@flax.struct.dataclass
class SkipState:
  """Loop state of `SkipDecoder`.

  cache: the target's cache (lengths as in `ARState`); entries of skipped layers unwritten.
    With `h2o`, an `h2o.H2OCache` (the eviction policy composes with skipping).
  last_B: the newest token of each row; step: loop iterations so far (the forward of
  iteration k produces generated token k + 1 for every active row).
  layers_B: layer forwards run per row (prefill counted as one forward of all layers).
  progress: tokens, counts and done flags.
  """
  cache: cache_lib.Cache
  last_B: jax.Array
  step: jax.Array
  layers_B: jax.Array
  progress: base.Progress


@registry.register
@dataclasses.dataclass(frozen=True)
class SkipDecoder(base.Decoder):
  """SkipDecode: per-step skip of the lowest layers, non-decreasing over the generation,
  shared by the batch; no cache recomputation (lossy)."""
  name: ClassVar[str] = 'skipdecode'
  family: ClassVar[str] = 'early_exit'
  lossless: ClassVar[bool] = False
  min_skip: int = 0        # layers skipped at the start of generation (after warmup)
  max_skip: int = -1       # layers skipped from `length` on (-1 = half the layers)
  warmup: int = 0          # generated tokens at min_skip before the decay starts
  length: int = 0          # generated token index where max_skip is reached (0 = the last)
  schedule: str = ''       # explicit skips per generated token, '0/0/1/2' (overrides the above)
  skip_from: str = 'bottom'  # 'bottom' = SkipDecode; 'top' = plain early exit, same schedule
  h2o: int = 0             # H2O cache budget in slots (0 = full cache; decoding/h2o.py)
  recent: int = 0          # H2O: the newest positions never evicted

  def cheaper_steps(self) -> bool:
    return True

  def skips(self, num_layers: int, max_new_tokens: int) -> np.ndarray:
    """The schedule for this budget, checked: [max_new_tokens] ints, entry 0 = 0."""
    N, L = max_new_tokens, num_layers
    if self.skip_from not in ('bottom', 'top'):
      raise ValueError(f"skipdecode: skip_from must be 'bottom' or 'top', got "
                       f'{self.skip_from!r}.')
    if self.schedule:
      skip = parse_schedule(self.schedule, N)
    else:
      hi = L // 2 if self.max_skip < 0 else self.max_skip
      if self.warmup < 0 or self.length < 0:
        raise ValueError('skipdecode: warmup and length must be >= 0.')
      if not 0 <= self.min_skip <= hi:
        raise ValueError(f'skipdecode: need 0 <= min_skip <= max_skip, got min_skip='
                         f'{self.min_skip}, max_skip={hi}.')
      skip = linear_schedule(N, min_skip=self.min_skip, max_skip=hi, warmup=self.warmup,
                             length=self.length or max(N - 1, 1))
    if np.any(np.diff(skip) < 0):
      at = int(np.argmax(np.diff(skip) < 0)) + 1
      raise ValueError(
          f'skipdecode: the schedule must never decrease (layers run per token never '
          f'increase: a token may not read cache entries an earlier token skipped), but skip '
          f'falls from {skip[at - 1]} to {skip[at]} at generated token {at}.')
    if skip.min() < 0 or skip.max() > L - 1:
      raise ValueError(f'skipdecode: skips must be in [0, {L - 1}] for a {L}-layer model '
                       f'(at least one layer runs), got {skip.min()}..{skip.max()}.')
    if skip[0] != 0:
      raise ValueError('skipdecode: generated token 0 comes from prefill, which runs every '
                       f'layer; the schedule must start at 0, got {skip[0]}.')
    return skip

  def generate(self, models: base.Models, params: dict[str, Any], prompt_BxP: jax.Array,
               prompt_len_B: jax.Array, row_keys_B: jax.Array, *, max_new_tokens: int,
               cache_size: int, eos_id: int, pad_id: int) -> base.DecodeResult:
    target, p = models.target, params['target']
    cfg = target.cfg
    L = cfg.num_layers
    if config_lib.DELTAPRODUCT in cfg.layer_types:
      raise ValueError('skipdecode skips layers per token; recurrent (deltaproduct) layers '
                       'need every token, so hybrids are not supported.')
    B, N = prompt_BxP.shape[0], max_new_tokens
    skip_N = self.skips(L, N)
    # The schedule never decreases, so it is a sequence of phases of one skip each:
    # (skip, first generated index after the phase). One while_loop per phase, each with its
    # own static layer range: no lax.switch in the step (a conditional around the forward
    # made XLA copy the cache in and out of its branches at every step).
    phases = [(int(skip_N[i]), i + 1) for i in range(1, N)
              if i == N - 1 or skip_N[i + 1] != skip_N[i]]

    policy = h2o_lib.H2OPolicy(self.h2o, self.recent) if self.h2o else None
    if policy is not None:
      logits_BxV, cache = policy.prefill(target, p, prompt_BxP, prompt_len_B, cache_size)
    else:
      if self.recent:
        raise ValueError('skipdecode: recent is an H2O setting; set h2o=BUDGET too.')
      cache = cache_lib.Cache.init(cfg, B, cache_size)
      logits_BxV, cache, _ = base.prefill(target, p, prompt_BxP, prompt_len_B, cache)
    first_B = sampling_lib.sample(sampling_lib.token_keys(row_keys_B, prompt_len_B),
                                  logits_BxV, self.sampling)
    state = SkipState(cache=cache, last_B=first_B, step=jnp.int32(0),
                      layers_B=jnp.full((B,), L, jnp.int32),
                      progress=base.Progress.start(B, N, pad_id=pad_id, eos_id=eos_id,
                                                   first_B=first_B, target_forwards=1))

    def phase(skip: int, end: int):
      def cond_fn(st: SkipState) -> jax.Array:
        return ~jnp.all(st.progress.done_B) & (st.step + 1 < end)

      def step_fn(st: SkipState) -> SkipState:
        active_B = st.progress.active_B
        pos_B = prompt_len_B + st.progress.num_generated_B - 1
        out, cache = forward_skipping(target, p, st.last_B[:, None],
                                      jnp.where(active_B, pos_B, -1)[:, None], st.cache, skip,
                                      self.skip_from, policy)
        next_B = sampling_lib.sample(sampling_lib.token_keys(row_keys_B, pos_B + 1),
                                     out.logits_BxTxV[:, 0], self.sampling)
        next_B = jnp.where(active_B, next_B, pad_id)
        progress = st.progress.count(active_B).commit(
            next_B[:, None], active_B.astype(jnp.int32), next_B == eos_id, N)
        return SkipState(cache=cache, last_B=next_B, step=st.step + 1,
                         layers_B=st.layers_B + (L - skip) * active_B, progress=progress)
      return cond_fn, step_fn

    for skip, end in phases:
      state = jax.lax.while_loop(*phase(skip, end), state)
    return state.progress.result({'layer_forwards': state.layers_B})
