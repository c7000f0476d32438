"""Registered latent-reasoning decoders: one loop (`loop.run_loop`), different defaults.

  latent          the loop with every setting exposed (mode=discrete is plain AR)
  soft_thinking   concept tokens (T 0.6, top-k 30, top-p 0.95, max-k 15) with Cold Stop
  swireasoning    full-vocabulary mixtures with SwiReasoning's entropy-driven switches
  coconut         Coconut: `latent_steps` last hidden states fed back, then `</think>`
  pause_thinking  `latent_steps` <pause> tokens, then `</think>` (the pause-as-thought control)

All are lossy (DESIGN.md): they do not reproduce the model's AR distribution, and report
quality next to speed (benchmarks/latent.py). Token ids default to the byte tokenizer's
specials; set think_*_id / latent_id / pause_id for other tokenizers.

Prompts should end with `<think>` (the models trained by configs/latent_reasoning.py see
`<bos> question <sep> <think>`); the answer follows `</think>`. Free-text prompts (sample.py
--prompt) get those tokens with `--decoder_config.append_ids=260,261` (byte ids).

Statistics (`DecodeResult.extra`, per row): latent_steps (positions fed a thought),
think_tokens (positions up to and including `</think>`; all if thinking never closed),
switches (SwiReasoning latent -> explicit switches), cold_stop (1 if Cold Stop fired).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from decoding import base
from decoding import registry
from decoding.latent import controllers
from decoding.latent import feedback
from decoding.latent import loop
from models import cache as cache_lib


@registry.register
@dataclasses.dataclass(frozen=True)
class LatentDecoder(base.Decoder):
  """The latent loop, every setting exposed (mode=discrete is AR; lossy otherwise).

  Pluggable feedback (discrete, concept, full, hidden, gumbel, dirichlet, pause) and the
  Cold Stop / SwiReasoning / fixed-thought controllers; see docs/latent.md.
  """
  name: ClassVar[str] = 'latent'
  family: ClassVar[str] = 'latent'
  lossless: ClassVar[bool] = False
  mode: str = 'concept'
  concept_temperature: float = 0.6
  concept_top_k: int = 30
  concept_top_p: float = 0.95
  concept_min_p: float = 0.0
  concept_max_k: int = 15
  noise_scale: float = 1.0
  latent_steps: int = 0
  cold_stop_threshold: float = 0.01
  cold_stop_patience: int = 0
  swi: bool = False
  swi_window: int = 512
  swi_alpha0: float = 1.0
  swi_beta0: float = 0.7
  swi_max_switches: int = 0
  start_thinking: bool = True
  think_start_id: int = 261
  think_end_id: int = 262
  latent_id: int = 263
  pause_id: int = 264
  append_ids: tuple[int, ...] = ()

  def __post_init__(self):
    mode = feedback.mode_id(self.mode)
    if mode in feedback.FIXED_MODES and self.latent_steps <= 0:
      raise ValueError(f'mode={self.mode!r} feeds a fixed number of thoughts: set '
                       'latent_steps > 0.')
    self.settings  # validates the sub-configs.  pylint: disable=pointless-statement

  @property
  def settings(self) -> loop.LoopSettings:
    return loop.LoopSettings(
        sampling=self.sampling,
        concept=feedback.ConceptConfig(self.concept_temperature, self.concept_top_k,
                                       self.concept_top_p, self.concept_min_p,
                                       self.concept_max_k, self.noise_scale),
        control=controllers.ControlConfig(
            think_end_id=self.think_end_id, latent_steps=self.latent_steps,
            cold_stop_threshold=self.cold_stop_threshold,
            cold_stop_patience=self.cold_stop_patience, swi=self.swi,
            swi_window=self.swi_window, swi_max_switches=self.swi_max_switches),
        think_start_id=self.think_start_id, latent_id=self.latent_id, pause_id=self.pause_id,
        start_thinking=self.start_thinking, swi_alpha0=self.swi_alpha0,
        swi_beta0=self.swi_beta0)

  def extra_cache_slots(self, max_new_tokens: int) -> int:
    del max_new_tokens
    return len(self.append_ids)

  def generate(self, models: base.Models, params: dict[str, Any], prompt_BxP: jax.Array,
               prompt_len_B: jax.Array, row_keys_B: jax.Array, *, max_new_tokens: int,
               cache_size: int, eos_id: int, pad_id: int) -> base.DecodeResult:
    target, p = models.target, params['target']
    prompt_BxP, prompt_len_B = append_tokens(prompt_BxP, prompt_len_B, self.append_ids, pad_id)
    B = prompt_BxP.shape[0]
    cache = cache_lib.Cache.init(target.cfg, B, cache_size)
    first = loop.prefill_first(target, p, prompt_BxP, prompt_len_B, cache)
    modes_B = jnp.full((B,), feedback.mode_id(self.mode), jnp.int32)
    s = loop.run_loop(loop.model_forward(target, p), p['embed']['embedding'], first,
                      prompt_len_B, row_keys_B, modes_B, self.settings,
                      max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id)
    return result(s, self.think_end_id)


def append_tokens(prompt_BxP: jax.Array, prompt_len_B: jax.Array, ids: tuple[int, ...],
                  pad_id: int) -> tuple[jax.Array, jax.Array]:
  """Appends `ids` after each row's prompt (e.g. <sep> <think> for free-text prompts)."""
  if not ids:
    return prompt_BxP, prompt_len_B
  B, K = prompt_BxP.shape[0], len(ids)
  out = jnp.concatenate([prompt_BxP, jnp.full((B, K), pad_id, prompt_BxP.dtype)], axis=1)
  cols_BxK = prompt_len_B[:, None] + jnp.arange(K)[None, :]
  out = out.at[jnp.arange(B)[:, None], cols_BxK].set(jnp.asarray(ids, out.dtype)[None, :])
  return out, prompt_len_B + K


def result(s: loop.LoopState, think_end_id: int) -> base.DecodeResult:
  """The DecodeResult of a finished loop (one committed token per target forward)."""
  tokens_BxN, num_generated_B = s.progress.tokens_BxN, s.progress.num_generated_B
  N = tokens_BxN.shape[1]
  n_1xN = jnp.arange(N)[None, :]
  valid_BxN = n_1xN < num_generated_B[:, None]
  latent_steps_B = jnp.sum(valid_BxN & (s.modes_BxN != feedback.DISCRETE), axis=1)
  is_end_BxN = valid_BxN & (tokens_BxN == think_end_id)
  think_B = jnp.where(is_end_BxN.any(1), jnp.argmax(is_end_BxN, axis=1) + 1, num_generated_B)
  return s.progress.result(
      {'latent_steps': latent_steps_B.astype(jnp.int32),
       'think_tokens': think_B.astype(jnp.int32),
       'switches': s.ctrl.switches.astype(jnp.int32),
       'cold_stop': s.ctrl.cold_stopped.astype(jnp.int32)})


@registry.register
@dataclasses.dataclass(frozen=True)
class SoftThinkingDecoder(LatentDecoder):
  """Soft Thinking (lossy): concept tokens while thinking, Cold Stop, discrete answer.

  Concept token = sum_k p_k E[k] over the truncated distribution."""
  name: ClassVar[str] = 'soft_thinking'
  mode: str = 'concept'
  cold_stop_patience: int = 256


@registry.register
@dataclasses.dataclass(frozen=True)
class SwiReasoningDecoder(LatentDecoder):
  """SwiReasoning (lossy): full mixtures, entropy-driven latent/explicit switches.

  Inputs are blended with E[<think>] / E[</think>] at switches; optional switch cap."""
  name: ClassVar[str] = 'swireasoning'
  mode: str = 'full'
  swi: bool = True


@registry.register
@dataclasses.dataclass(frozen=True)
class CoconutDecoder(LatentDecoder):
  """Coconut (lossy): `latent_steps` hidden-state thoughts, then `</think>` and the answer.

  Needs a Coconut-trained model (training/objectives/coconut.py)."""
  name: ClassVar[str] = 'coconut'
  mode: str = 'hidden'
  latent_steps: int = 6


@registry.register
@dataclasses.dataclass(frozen=True)
class PauseThinkingDecoder(LatentDecoder):
  """Pause tokens as thoughts (lossy; Coconut's control), then `</think>` and the answer."""
  name: ClassVar[str] = 'pause_thinking'
  mode: str = 'pause'
  latent_steps: int = 6
