"""The thinking controllers: when a row thinks in latent space, when it switches, when it stops.

Pure per-row state machines over the signals of one decoding step (the entropy of the new
next-token distribution and the token read from it). The decode loop (`loop.py`) calls
`control_step` once per generated position; tests drive it with scripted entropies.

* Natural close: the token read is `</think>` (discrete and mixture modes).
* Fixed thoughts (Coconut, pause tokens): after `latent_steps` latent inputs, `</think>` is
  forced.
* Cold Stop (Soft Thinking): entropy < `cold_stop_threshold` for `cold_stop_patience`
  consecutive latent steps forces `</think>`.
* SwiReasoning (sdc17/SwiReasoning, generation_utils.py): rows start latent with the
  reference entropy H_ref = H_0. Latent -> explicit when H_t < H_ref; explicit -> latent when
  H_t > H_ref after at least `swi_window` steps in the current mode (and never after
  `</think>`). Every switch sets H_ref = H_t and restarts the window. The inputs at switches
  are blended with E[<think>] / E[</think>] (the loop does that from `to_latent` /
  `to_explicit`). With `swi_max_switches` > 0, the latent -> explicit switch that reaches the
  cap forces `</think>` (the reference injects "</think>" then).

State lives in `ControlState` (arrays [B]); the static settings in `ControlConfig`.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ControlConfig:
  """Static controller settings; 0 turns a rule off.

  think_end_id: the `</think>` token forced when thinking closes.
  latent_steps: fixed number of latent inputs before `</think>` (Coconut / pause tokens);
    0 = until the row closes by itself.
  cold_stop_threshold, cold_stop_patience: Cold Stop (patience 0 = off).
  swi: enable the SwiReasoning switch rules.
  swi_window: minimum steps in explicit mode before switching back to latent.
  swi_max_switches: cap on latent -> explicit switches (0 = none).
  """
  think_end_id: int = 262
  latent_steps: int = 0
  cold_stop_threshold: float = 0.01
  cold_stop_patience: int = 0
  swi: bool = False
  swi_window: int = 512
  swi_max_switches: int = 0

  def __post_init__(self):
    for name in ('latent_steps', 'cold_stop_patience', 'swi_window', 'swi_max_switches'):
      if getattr(self, name) < 0:
        raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}.')


@flax.struct.dataclass
class ControlState:
  """Per-row controller state, all [B].

  thinking: inside the thinking block (before `</think>`).
  latent: the row's current mode is latent (the input built at this step is a thought).
  latent_count: latent inputs fed so far.
  low_run: consecutive latent steps with entropy below the Cold Stop threshold.
  h_ref: SwiReasoning's reference entropy; stay: steps since the last switch.
  switches: latent -> explicit switches so far.
  started: the first step set h_ref.
  cold_stopped: Cold Stop fired.
  """
  thinking: jax.Array
  latent: jax.Array
  latent_count: jax.Array
  low_run: jax.Array
  h_ref: jax.Array
  stay: jax.Array
  switches: jax.Array
  started: jax.Array
  cold_stopped: jax.Array


@flax.struct.dataclass
class Decision:
  """What one step decided, per row [B].

  token: the token recorded at this position (forced `</think>` when thinking closes, else
    the token read from the distribution, or the caller's fixed token for fixed modes).
  latent: the input at this position is a thought (else E[token]).
  close: thinking closed here (the token is `</think>`).
  to_latent, to_explicit: SwiReasoning switched here (the loop blends the input).
  """
  token: jax.Array
  latent: jax.Array
  close: jax.Array
  to_latent: jax.Array
  to_explicit: jax.Array


def init_state(thinking_B: jax.Array, start_latent_B: jax.Array) -> ControlState:
  """Rows that start inside a thinking block and latent (SwiReasoning and Soft Thinking
  start latent right after `<think>`)."""
  thinking_B = jnp.asarray(thinking_B, jnp.bool_)
  B = thinking_B.shape[0]
  zeros = jnp.zeros((B,), jnp.int32)
  return ControlState(thinking=thinking_B, latent=thinking_B & start_latent_B,
                      latent_count=zeros, low_run=zeros, h_ref=jnp.zeros((B,), jnp.float32),
                      stay=zeros, switches=zeros, started=jnp.zeros((B,), jnp.bool_),
                      cold_stopped=jnp.zeros((B,), jnp.bool_))


def control_step(cfg: ControlConfig, s: ControlState, entropy_B: jax.Array,
                 read_token_B: jax.Array, fixed_B: jax.Array, fixed_token_B: jax.Array,
                 active_B: jax.Array) -> tuple[ControlState, Decision]:
  """One step of every rule for the distribution just computed.

  Args:
    entropy_B: entropy of the new next-token distribution (unfiltered, nats).
    read_token_B: the token read from it (sampled with the decoder's sampling config).
    fixed_B: the row's latent mode is a fixed mode (hidden, pause): no natural close while
      latent, and its latent positions record `fixed_token_B`.
    active_B: rows still generating (others keep their state).
  """
  end = cfg.think_end_id
  latent = s.thinking & s.latent
  # SwiReasoning: reference entropy and switches.
  first = ~s.started
  h_ref = jnp.where(first, entropy_B, s.h_ref)
  stay = jnp.where(first, s.stay, s.stay + 1)
  if cfg.swi:
    to_explicit = s.started & latent & (entropy_B < h_ref)
    to_latent = (s.started & s.thinking & ~s.latent & (entropy_B > h_ref)
                 & (stay >= cfg.swi_window))
  else:
    to_explicit = to_latent = jnp.zeros_like(latent)
  switched = to_explicit | to_latent
  stay = jnp.where(switched, 0, stay)
  h_ref = jnp.where(switched, entropy_B, h_ref)
  switches = s.switches + to_explicit
  capped = (to_explicit & (switches >= cfg.swi_max_switches) if cfg.swi_max_switches
            else jnp.zeros_like(latent))
  # Cold Stop: consecutive confident latent steps.
  low_run = jnp.where(latent & (entropy_B < cfg.cold_stop_threshold), s.low_run + 1, 0)
  cold = (low_run >= cfg.cold_stop_patience) & latent if cfg.cold_stop_patience else (
      jnp.zeros_like(latent))
  # Fixed thoughts: close after latent_steps of them.
  fixed_latent = latent & fixed_B
  fixed_done = (fixed_latent & (s.latent_count >= cfg.latent_steps) if cfg.latent_steps
                else jnp.zeros_like(latent))
  natural = s.thinking & ~fixed_latent & (read_token_B == end)
  forced = s.thinking & (cold | fixed_done | capped)
  close = natural | forced
  next_latent = s.thinking & ~close & jnp.where(latent, ~to_explicit, to_latent)
  token = jnp.where(forced, end, jnp.where(next_latent & fixed_B, fixed_token_B, read_token_B))
  new = ControlState(thinking=s.thinking & ~close, latent=next_latent,
                     latent_count=s.latent_count + next_latent, low_run=low_run, h_ref=h_ref,
                     stay=stay, switches=switches, started=jnp.ones_like(s.started),
                     cold_stopped=s.cold_stopped | (cold & s.thinking))
  new = jax.tree.map(lambda n, o: jnp.where(active_B, n, o), new, s)
  dec = Decision(token=token.astype(jnp.int32), latent=next_latent & active_B,
                 close=close & active_B, to_latent=to_latent & active_B & next_latent,
                 to_explicit=to_explicit & active_B & ~forced)
  return new, dec
