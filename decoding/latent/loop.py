"""The one latent-reasoning decode loop: pluggable feedback, per-row modes, controllers.

  state = run_loop(forward, embed_VxD, first, prompt_len_B, row_keys_B, latent_mode_B,
                   settings, max_new_tokens=N, eos_id=e, pad_id=p)

Every step feeds one input per row at position prompt_len + g - 1, reads the next-token
logits and final-normed hidden state, and `decide`s the token at position prompt_len + g:

  1. entropy H of softmax(logits); the token read from the distribution (sampled with the
     decoder's `SamplingConfig` under the key of (row, position), as the AR decoder does);
  2. the controllers (`controllers.control_step`): natural close at `</think>`, fixed thought
     count, Cold Stop, SwiReasoning switches;
  3. the next input: E[token] for explicit positions, the row's latent feedback
     (`feedback.latent_embeds`) for thoughts, blended with E[<think>] / E[</think>] at
     SwiReasoning switches (alpha = a0 + (1 - a0) g / N, beta likewise).

`latent_mode_B` is an array, so one compiled loop serves every feedback mode and a batch may
mix them. `forward(x_BxD, pos_B, cache) -> (logits_BxV, hidden_BxD, cache)` is the model (or
a scripted stand-in in tests); a negative position means the row is done (nothing written).

With every row in `discrete` mode the loop is plain AR decoding, token for token. A row ends
at EOS (read at an explicit or mixture position) or after max_new_tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

from decoding import base
from decoding import sampling as sampling_lib
from decoding.latent import controllers
from decoding.latent import feedback

Forward = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, jax.Array, Any]]
NOISE_SALT = 0x5EED


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """Static settings of the loop (hashable).

  sampling: how the token is read at every position (answer and thinking alike).
  concept: Soft Thinking truncation and the noise of the noisy modes.
  control: the controllers (see `controllers.ControlConfig`).
  think_start_id, latent_id, pause_id: special tokens (defaults: the byte tokenizer's).
  start_thinking: rows start inside a thinking block (the prompt ends with `<think>`).
  swi_alpha0, swi_beta0: SwiReasoning's blend weights at the first step (grow to 1).
  """
  sampling: sampling_lib.SamplingConfig = sampling_lib.SamplingConfig()
  concept: feedback.ConceptConfig = feedback.ConceptConfig()
  control: controllers.ControlConfig = controllers.ControlConfig()
  think_start_id: int = 261
  latent_id: int = 263
  pause_id: int = 264
  start_thinking: bool = True
  swi_alpha0: float = 1.0
  swi_beta0: float = 0.7


@flax.struct.dataclass
class LoopState:
  """State of `run_loop`.

  cache: the model cache; x_BxD: the input decided for position prompt_len + g - 1.
  ctrl: controller state. progress: the tokens, counts (target forwards: prefill counted)
  and done flags (`base.Progress`, one token per forward). modes_BxN: the feedback mode
  (DISCRETE for explicit positions) at each generated position. entropy_BxN: H of the
  distribution each token was read from.
  """
  cache: Any
  x_BxD: jax.Array
  ctrl: controllers.ControlState
  progress: base.Progress
  modes_BxN: jax.Array
  entropy_BxN: jax.Array


def _record(buf_BxN: jax.Array, value_B: jax.Array, index_B: jax.Array,
            active_B: jax.Array) -> jax.Array:
  return base.write_tokens(buf_BxN, value_B[:, None].astype(buf_BxN.dtype), index_B,
                           active_B.astype(jnp.int32))


def decide(settings: LoopSettings, embed_VxD: jax.Array, ctrl: controllers.ControlState,
           logits_BxV: jax.Array, hidden_BxD: jax.Array, latent_mode_B: jax.Array,
           key_B: jax.Array, step_B: jax.Array, max_new_tokens: int, active_B: jax.Array
           ) -> tuple[controllers.ControlState, controllers.Decision, jax.Array, jax.Array]:
  """Token, mode and next input for one position. Returns (ctrl, decision, x_BxD, H_B)."""
  H_B = feedback.entropy(logits_BxV)
  read_B = sampling_lib.sample(key_B, logits_BxV, settings.sampling)
  fixed_B = (latent_mode_B == feedback.HIDDEN) | (latent_mode_B == feedback.PAUSE)
  fixed_token_B = jnp.where(latent_mode_B == feedback.PAUSE, settings.pause_id,
                            settings.latent_id)
  ctrl, dec = controllers.control_step(settings.control, ctrl, H_B, read_B, fixed_B,
                                       fixed_token_B, active_B)
  noise_keys_B = jax.vmap(lambda k: jax.random.fold_in(k, NOISE_SALT))(key_B)
  soft_BxD = feedback.latent_embeds(latent_mode_B, logits_BxV, hidden_BxD, embed_VxD,
                                    noise_keys_B, settings.concept, settings.pause_id)
  token_BxD = jnp.take(embed_VxD, dec.token, axis=0).astype(jnp.float32)
  x_BxD = jnp.where(dec.latent[:, None], soft_BxD, token_BxD)
  if settings.control.swi:
    frac_Bx1 = step_B.astype(jnp.float32)[:, None] / max_new_tokens
    alpha = settings.swi_alpha0 + (1 - settings.swi_alpha0) * frac_Bx1
    beta = settings.swi_beta0 + (1 - settings.swi_beta0) * frac_Bx1
    e_start = embed_VxD[settings.think_start_id].astype(jnp.float32)
    e_end = embed_VxD[settings.control.think_end_id].astype(jnp.float32)
    x_BxD = jnp.where(dec.to_latent[:, None], alpha * soft_BxD + (1 - alpha) * e_start, x_BxD)
    x_BxD = jnp.where(dec.to_explicit[:, None], beta * soft_BxD + (1 - beta) * e_end, x_BxD)
  return ctrl, dec, x_BxD, H_B


def run_loop(forward: Forward, embed_VxD: jax.Array, first: tuple[jax.Array, jax.Array, Any],
             prompt_len_B: jax.Array, row_keys_B: jax.Array, latent_mode_B: jax.Array,
             settings: LoopSettings, *, max_new_tokens: int, eos_id: int, pad_id: int,
             thinking_B: jax.Array | None = None) -> LoopState:
  """Decodes up to `max_new_tokens` per row after the prompt (see the module docstring).

  Args:
    forward: one-position model call (see `Forward`).
    embed_VxD: the token embedding the model reads (soft tokens mix its rows).
    first: (logits [B, V], final-normed hidden [B, D], cache) at each row's last prompt
      token: what prefill returns.
    latent_mode_B: int [B], each row's latent feedback mode (`feedback.MODES`); `discrete`
      rows never think in latent space.
    thinking_B: rows that start inside a thinking block (default: settings.start_thinking).
  """
  logits_BxV, hidden_BxD, cache = first
  B, N = prompt_len_B.shape[0], max_new_tokens
  latent_mode_B = jnp.asarray(latent_mode_B, jnp.int32)
  if thinking_B is None:
    thinking_B = jnp.full((B,), settings.start_thinking)
  ctrl = controllers.init_state(thinking_B, latent_mode_B != feedback.DISCRETE)
  zeros_B = jnp.zeros((B,), jnp.int32)
  ctrl, dec, x_BxD, H_B = decide(
      settings, embed_VxD, ctrl, logits_BxV, hidden_BxD, latent_mode_B,
      sampling_lib.token_keys(row_keys_B, prompt_len_B), zeros_B, N,
      jnp.ones((B,), jnp.bool_))
  mode_B = jnp.where(dec.latent, latent_mode_B, feedback.DISCRETE)
  token_B = dec.token
  state = LoopState(
      cache=cache, x_BxD=x_BxD, ctrl=ctrl,
      progress=base.Progress.start(B, N, pad_id=pad_id, eos_id=eos_id, first_B=token_B,
                                   target_forwards=1),
      modes_BxN=jnp.full((B, N), -1, jnp.int32).at[:, 0].set(mode_B),
      entropy_BxN=jnp.zeros((B, N), jnp.float32).at[:, 0].set(H_B))

  def cond_fn(s: LoopState) -> jax.Array:
    return ~jnp.all(s.progress.done_B)

  def step_fn(s: LoopState) -> LoopState:
    active_B = s.progress.active_B
    pos_B = prompt_len_B + s.progress.num_generated_B - 1
    logits_BxV, hidden_BxD, cache = forward(s.x_BxD, jnp.where(active_B, pos_B, -1), s.cache)
    ctrl, dec, x_BxD, H_B = decide(
        settings, embed_VxD, s.ctrl, logits_BxV, hidden_BxD, latent_mode_B,
        sampling_lib.token_keys(row_keys_B, pos_B + 1), s.progress.num_generated_B, N,
        active_B)
    mode_B = jnp.where(dec.latent, latent_mode_B, feedback.DISCRETE)
    token_B = jnp.where(active_B, dec.token, pad_id)
    idx_B = s.progress.num_generated_B
    progress = s.progress.count(active_B).commit(token_B[:, None], active_B.astype(jnp.int32),
                                                 token_B == eos_id, N)
    return LoopState(
        cache=cache, x_BxD=jnp.where(active_B[:, None], x_BxD, s.x_BxD), ctrl=ctrl,
        progress=progress, modes_BxN=_record(s.modes_BxN, mode_B, idx_B, active_B),
        entropy_BxN=_record(s.entropy_BxN, H_B, idx_B, active_B))

  return jax.lax.while_loop(cond_fn, step_fn, state)


def model_forward(model, params: Any) -> Forward:
  """`forward` for a `models.Transformer`: one position per row through the cache."""
  def forward(x_BxD, pos_B, cache):
    out = model.apply({'params': params}, None, pos_B[:, None], cache=cache,
                      inputs_embeds_BxTxD=x_BxD[:, None])
    return out.logits_BxTxV[:, 0], out.last_hidden_BxTxD[:, 0].astype(jnp.float32), out.cache
  return forward


def prefill_first(model, params: Any, prompt_BxP: jax.Array, prompt_len_B: jax.Array,
                  cache: Any) -> tuple[jax.Array, jax.Array, Any]:
  """Prefill: (logits, final-normed hidden, cache) at each row's last prompt token."""
  logits_BxV, cache, out = base.prefill(model, params, prompt_BxP, prompt_len_B, cache)
  last_B = jnp.maximum(prompt_len_B - 1, 0)
  hidden_BxD = jnp.take_along_axis(out.last_hidden_BxTxD, last_B[:, None, None], axis=1)[:, 0]
  return logits_BxV, hidden_BxD.astype(jnp.float32), cache
