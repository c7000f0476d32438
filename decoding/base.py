"""What every decoder shares: the models it runs, its result and statistics, and prefill.

A decoder is a frozen dataclass of its settings (hashable: it is a static jit argument) with a
pure `generate` that runs one `jax.lax.while_loop` with fixed shapes:

  result = decoder.generate(models, params, prompt_BxP, prompt_len_B, row_keys_B,
                            max_new_tokens=N, cache_size=S, eos_id=e)

`models` holds the Flax modules (static), `params` the matching parameter trees
({'target': ..., 'draft': ...}). Prompts are right-padded; row b's prompt is
prompt_BxP[b, :prompt_len_B[b]].
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from decoding import sampling as sampling_lib
from models import cache as cache_lib
from models import kind as kind_lib
from models import transformer as transformer_lib


@dataclasses.dataclass(frozen=True)
class Models:
  """The modules a decoder runs: the target plus named extras (draft model, heads...)."""
  target: transformer_lib.Transformer
  extras: tuple[tuple[str, Any], ...] = ()

  def __getitem__(self, name: str) -> Any:
    if name == 'target':
      return self.target
    for key, module in self.extras:
      if key == name:
        return module
    raise KeyError(f'No model {name!r}; have {["target"] + [k for k, _ in self.extras]}.')


@flax.struct.dataclass
class DecodeResult:
  """Tokens and the statistics every decoder reports (DESIGN.md, 'The decoding contract').

  tokens_BxN: generated tokens, padded with `pad_id` after each row's end (EOS included).
  num_generated_B: tokens generated per row.
  target_forwards_B: target forward passes while the row was active (prefill included).
  other_forwards_B: draft / head / auxiliary forward passes.
  step_tokens_hist_BxM: steps that committed exactly m tokens (m = 0..M-1).
  extra: decoder-specific statistics (e.g. acceptance by draft position), arrays [B, ...].
  """
  tokens_BxN: jax.Array
  num_generated_B: jax.Array
  target_forwards_B: jax.Array
  other_forwards_B: jax.Array
  step_tokens_hist_BxM: jax.Array
  extra: dict[str, jax.Array] = flax.struct.field(default_factory=dict)


@flax.struct.dataclass
class Progress:
  """The per-row bookkeeping every decode loop embeds, and the `DecodeResult` it makes.

  tokens_BxN: output buffer padded with pad_id (None for canvas decoders, whose output is
    their canvas: they give tokens and counts to `result`).
  num_generated_B: tokens generated so far; done_B: row finished (EOS or budget) -- finished
    rows are neither written nor counted.
  target_forwards_B / other_forwards_B: forward passes while the row was active.
  hist_BxM: steps that committed exactly m tokens (m = 0..M-1); None for loops that commit
    one token per target forward, whose histogram `result` derives ([0, target_forwards]).
  """
  tokens_BxN: jax.Array | None
  num_generated_B: jax.Array
  done_B: jax.Array
  target_forwards_B: jax.Array
  other_forwards_B: jax.Array
  hist_BxM: jax.Array | None

  @classmethod
  def start(cls, batch: int, max_new_tokens: int, *, pad_id: int = 0, eos_id: int = -1,
            first_B: jax.Array | None = None, hist_size: int = 0, target_forwards: int = 0,
            other_forwards: int = 0, tokens: bool = True) -> 'Progress':
    """Progress before the loop. With `first_B` (the token sampled after prefill) the row has
    generated one token and is done if it is EOS or the budget is one token."""
    B, N = batch, max_new_tokens
    buf = jnp.full((B, N), pad_id, jnp.int32) if tokens else None
    if first_B is None:
      num, done = jnp.zeros((B,), jnp.int32), jnp.zeros((B,), bool)
    else:
      buf = buf.at[:, 0].set(first_B) if tokens else None
      num, done = jnp.ones((B,), jnp.int32), (first_B == eos_id) | (N <= 1)
    return cls(tokens_BxN=buf, num_generated_B=num, done_B=done,
               target_forwards_B=jnp.full((B,), target_forwards, jnp.int32),
               other_forwards_B=jnp.full((B,), other_forwards, jnp.int32),
               hist_BxM=jnp.zeros((B, hist_size), jnp.int32) if hist_size else None)

  @property
  def active_B(self) -> jax.Array:
    return ~self.done_B

  def commit(self, new_BxK: jax.Array, count_B: jax.Array, ended_B: jax.Array,
             max_new_tokens: int) -> 'Progress':
    """Writes new[b, :count[b]] after each row's tokens; a row is done once `ended` (EOS
    committed) or its budget is spent. `count` must be 0 for inactive rows."""
    num_B = self.num_generated_B + count_B
    return self.replace(
        tokens_BxN=write_tokens(self.tokens_BxN, new_BxK, self.num_generated_B, count_B),
        num_generated_B=num_B, done_B=self.done_B | ended_B | (num_B >= max_new_tokens))

  def count(self, active_B: jax.Array, *, other_B: jax.Array | int = 0,
            committed_B: jax.Array | None = None) -> 'Progress':
    """One loop step of the `active` rows: a target forward, `other` forwards, and (with a
    histogram) a step that committed `committed` tokens."""
    hist = self.hist_BxM
    if hist is not None and committed_B is not None:
      hist = add_hist(hist, committed_B, active_B)
    other = self.other_forwards_B
    if not isinstance(other_B, int) or other_B:
      other = other + other_B * active_B
    return self.replace(target_forwards_B=self.target_forwards_B + active_B,
                        other_forwards_B=other, hist_BxM=hist)

  def result(self, extra: dict[str, jax.Array] | None = None, *,
             tokens_BxN: jax.Array | None = None,
             num_generated_B: jax.Array | None = None) -> 'DecodeResult':
    """The DecodeResult (tokens and counts given here win over the sub-state's)."""
    hist = self.hist_BxM
    if hist is None:
      hist = jnp.stack([jnp.zeros_like(self.target_forwards_B), self.target_forwards_B], 1)
    return DecodeResult(
        tokens_BxN=(self.tokens_BxN if tokens_BxN is None else tokens_BxN).astype(jnp.int32),
        num_generated_B=(self.num_generated_B if num_generated_B is None
                         else num_generated_B).astype(jnp.int32),
        target_forwards_B=self.target_forwards_B.astype(jnp.int32),
        other_forwards_B=self.other_forwards_B.astype(jnp.int32),
        step_tokens_hist_BxM=hist.astype(jnp.int32), extra=extra or {})


def add_hist(hist_BxM: jax.Array, count_B: jax.Array, active_B: jax.Array) -> jax.Array:
  """Counts one step of `count` committed tokens (clipped to M - 1) for the active rows."""
  M = hist_BxM.shape[1]
  return hist_BxM + (active_B[:, None] & (jnp.minimum(count_B, M - 1)[:, None] ==
                                          jnp.arange(M)[None, :])).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Decoder:
  """Base class: settings are dataclass fields; subclasses implement `generate`."""
  name: ClassVar[str] = ''
  family: ClassVar[str] = ''
  lossless: ClassVar[bool] = True
  # The model families (models.kind.FAMILIES) whose target it decodes; checked by for_model.
  model_kinds: ClassVar[tuple[str, ...]] = ('autoregressive',)
  # The trained heads (models.kind.HEADS) its target run must hold; checked by for_model.
  model_heads: ClassVar[tuple[str, ...]] = ()
  sampling: sampling_lib.SamplingConfig = sampling_lib.SamplingConfig()

  def is_lossless(self) -> bool:
    """Whether these settings reproduce the target (default: the class's `lossless`; a
    lossy setting of a lossless decoder, e.g. `ar:h2o=...`, says no)."""
    return type(self).lossless

  def cheaper_steps(self) -> bool:
    """Whether a target forward may run only part of the model (fewer layers, fewer keys),
    so a step can cost less than an AR step and tokens/s may exceed AR's by more than τ.
    Default no."""
    return False

  def extra_models(self) -> dict[str, str]:
    """Extra models to load: {name: workdir} (e.g. a draft model). Default none."""
    return {}

  def draft_vocab_sizes(self) -> tuple[int, ...]:
    """Sizes N of the decode-time draft vocabularies it reads (`models.draft_vocab`: the N
    most frequent tokens of the target's training data, as params['draft_vocab'][str(N)]).
    Default none."""
    return ()

  def extra_cache_slots(self, max_new_tokens: int) -> int:
    """Cache slots needed beyond prompt + max_new_tokens (drafts, tree nodes). Default 0."""
    del max_new_tokens
    return 0

  def prepare(self, models: 'Models', params: dict[str, Any], *, batch: int,
              cache_size: int) -> 'Decoder':
    """This decoder with settings measured on this machine filled in, before compiling (e.g.
    the relative forward costs of an adaptive draft length). Default: unchanged."""
    del models, params, batch, cache_size
    return self

  def for_model(self, kinds: Mapping[str, kind_lib.ModelKind]) -> 'Decoder':
    """This decoder checked against the kinds of the models it will run (`kinds['target']`,
    plus its extra models' by name where known) and with settings that depend on them filled
    in (e.g. a diffusion decoder's mask id and logit shift). Default: checks the target
    against `model_kinds` and `model_heads` (a one-line ValueError on a mismatch) and returns
    self."""
    kind_lib.require(kinds['target'], self.model_kinds, f'Decoder {self.name!r}')
    kind_lib.require_heads(kinds['target'], self.model_heads, f'Decoder {self.name!r}')
    return self

  def generate(self, models: Models, params: dict[str, Any], prompt_BxP: jax.Array,
               prompt_len_B: jax.Array, row_keys_B: jax.Array, *, max_new_tokens: int,
               cache_size: int, eos_id: int, pad_id: int) -> DecodeResult:
    raise NotImplementedError


def prompt_positions(prompt_BxP: jax.Array, prompt_len_B: jax.Array) -> jax.Array:
  """Positions 0..len-1 for prompt tokens and -1 (padding) after each row's length."""
  t_1xP = jnp.arange(prompt_BxP.shape[1], dtype=jnp.int32)[None, :]
  return jnp.where(t_1xP < prompt_len_B[:, None], t_1xP, -1)


def prefill(model: transformer_lib.Transformer, params: Any, prompt_BxP: jax.Array,
            prompt_len_B: jax.Array, cache: cache_lib.Cache, **kwargs
            ) -> tuple[jax.Array, cache_lib.Cache, transformer_lib.ModelOutput]:
  """Runs the prompts through `model` into `cache`.

  Returns (logits at each row's last prompt token [B, V], the cache with lengths = prompt
  lengths, the full model output).
  """
  out = model.apply({'params': params}, prompt_BxP, prompt_positions(prompt_BxP, prompt_len_B),
                    cache=cache, **kwargs)
  last_B = jnp.maximum(prompt_len_B - 1, 0)
  logits_BxV = jnp.take_along_axis(out.logits_BxTxV, last_B[:, None, None], axis=1)[:, 0]
  return logits_BxV, out.cache, out


def write_tokens(tokens_BxN: jax.Array, new_BxK: jax.Array, start_B: jax.Array,
                 count_B: jax.Array) -> jax.Array:
  """Writes new[b, :count[b]] at tokens[b, start[b]:] (the rest of new is dropped)."""
  B, K = new_BxK.shape
  N = tokens_BxN.shape[1]
  k_1xK = jnp.arange(K)[None, :]
  idx_BxK = jnp.where(k_1xK < count_B[:, None], start_B[:, None] + k_1xK, N)
  return tokens_BxN.at[jnp.arange(B)[:, None], idx_BxK].set(new_BxK, mode='drop')


def truncate_at_eos(new_BxK: jax.Array, count_B: jax.Array, room_B: jax.Array, eos_id: int
                    ) -> tuple[jax.Array, jax.Array]:
  """Cuts each row's `count` new tokens at the first EOS (kept) and at `room` tokens.

  Returns (count after cutting [B], whether the row hit EOS [B]).
  """
  K = new_BxK.shape[1]
  k_1xK = jnp.arange(K)[None, :]
  is_eos_BxK = (new_BxK == eos_id) & (k_1xK < count_B[:, None])
  first_eos_B = jnp.where(is_eos_BxK.any(1), jnp.argmax(is_eos_BxK, axis=1) + 1, K + 1)
  count_B = jnp.minimum(jnp.minimum(count_B, first_eos_B), room_B)
  hit_eos_B = is_eos_BxK.any(1) & (first_eos_B <= count_B)
  return count_B, hit_eos_B


def switch_in_place(index: jax.Array, branches: Sequence[Callable[[Any], Any] | None],
                    carry: Any) -> Any:
  """`lax.switch(index, branches, carry)` for branches carry -> carry (one structure) whose
  carry holds large buffers that they update, such as the target's cache. A branch None
  leaves the carry as it is.

  XLA gives every branch of a conditional its own copy of the buffers the branch writes:
  every layer's keys and values on each call (DEL's choice of exit layer made such copies
  every step). Here branch i is the body of a while loop that runs once when `index` is i
  and not at all otherwise; the loops run one after the other and the carry flows through
  them in place. A None branch gets no loop (each loop reads its predicate at least once: on
  a GPU, a round trip to the host). Placeholders in the carry for what a branch computes
  (rather than updates) cost one fill each.
  """
  for i, branch in enumerate(branches):
    if branch is None:
      continue
    carry = jax.lax.while_loop(
        lambda c: c[0], lambda c, f=branch: (jnp.zeros((), bool), f(c[1])),
        (jnp.asarray(index == i), carry))[1]
  return carry
