"""The speculative decoding loop: one `lax.while_loop`, fixed shapes, per-row acceptance.

  state = init(...)                       # target prefill, first token, drafter state
  state = while_loop(cond_fn, step_fn, state)

Each step: the drafter proposes a token tree rooted at the row's newest token; one target
forward scores every node (tree attention); the verifier walks the tree; the accepted path
plus one residual/bonus token are committed (cut at EOS and at the token budget); the target
cache keeps exactly the committed tokens (`verify.commit_accepted`; a tree's accepted path
moves into place as the next step's forward writes each layer); the drafter updates.
Rows accept different numbers of tokens and finish at different times; finished rows are
padding (never written, never counted).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from decoding import base
from decoding import sampling as sampling_lib
from decoding.speculative import adaptive
from decoding.speculative import drafter as drafter_lib
from decoding.speculative import verify as verify_lib
from models import cache as cache_lib


@flax.struct.dataclass
class SpecState:
  """Loop state of speculative decoding.

  cache: the target's cache; for active rows lengths = base = prompt_len + generated - 1
    (the newest token, `last_B`, is the next tree's root).
  progress: output buffer, counts, done flags, forward passes, and the histogram of tokens
    committed per step (`base.Progress`).
  accepted_by_depth_BxD: steps whose accepted path reached depth d + 1 (acceptance by
    position: divide by `steps_B`).
  steps_B, drafted_B: verification steps and drafted (non-root) nodes proposed.
  bad_steps_B: steps whose tree held a token id outside the target's vocabulary (a drafter
    bug: the forward reads such ids as 0 and they are never accepted; `run_decoder` raises).
  drafter: the drafter's own state.
  """
  cache: cache_lib.Cache
  last_B: jax.Array
  progress: base.Progress
  accepted_by_depth_BxD: jax.Array
  steps_B: jax.Array
  drafted_B: jax.Array
  bad_steps_B: jax.Array
  drafter: Any


def init_state(drafter: drafter_lib.Drafter, env: drafter_lib.Env, *, eos_id: int,
               pad_id: int) -> SpecState:
  """Target prefill, the first token (as AR samples it), and the drafter's initial state."""
  B = env.prompt_BxP.shape[0]
  N = env.max_new_tokens
  cache = cache_lib.Cache.init(env.target.cfg, B, env.cache_size)
  logits_BxV, cache, prefill = base.prefill(env.target, env.target_params, env.prompt_BxP,
                                            env.prompt_len_B, cache,
                                            **drafter.prefill_kwargs())
  if not drafter.is_chain:  # tree paths move when the next step's forward writes each layer
    cache = cache.owing(drafter.max_depth + 1)
  keys_B = sampling_lib.token_keys(env.row_keys_B, env.prompt_len_B)
  if env.typical is None:
    first_B = sampling_lib.sample(keys_B, logits_BxV, env.sampling)
  else:  # typical acceptance draws every token, the first too, above its threshold
    first_B = sampling_lib.sample_from_log_probs(keys_B, verify_lib.typical_log_probs(
        sampling_lib.log_probs(logits_BxV, env.sampling), *env.typical))
  zeros = jnp.zeros((B,), jnp.int32)
  progress = base.Progress.start(B, N, pad_id=pad_id, eos_id=eos_id, first_B=first_B,
                                 hist_size=drafter.hist_size, target_forwards=1,
                                 other_forwards=drafter.prefill_forwards)
  return SpecState(
      cache=cache, last_B=first_B, progress=progress,
      accepted_by_depth_BxD=jnp.zeros((B, drafter.max_depth), jnp.int32),
      steps_B=zeros, drafted_B=zeros, bad_steps_B=zeros,
      drafter=drafter.init(env, prefill, first_B))


def step(drafter: drafter_lib.Drafter, env: drafter_lib.Env, s: SpecState, *, eos_id: int,
         pad_id: int) -> SpecState:
  """One draft -> verify -> commit step for every active row."""
  active_B = s.progress.active_B
  base_B = env.prompt_len_B + s.progress.num_generated_B - 1
  tree, dstate, cache, other_B = drafter.propose(env, s.drafter, s.cache, s.last_B, base_B,
                                                 active_B)
  return verify_and_commit(drafter, env, s, tree, dstate, cache, other_B, eos_id=eos_id,
                           pad_id=pad_id)


def ar_step(drafter: drafter_lib.Drafter, env: drafter_lib.Env, s: SpecState, *, eos_id: int,
            pad_id: int) -> SpecState:
  """A step that drafts nothing (one target forward over the root; the drafter updates)."""
  active_B = s.progress.active_B
  tree = adaptive.ar_tree(s.last_B, active_B)
  return verify_and_commit(drafter, env, s, tree, s.drafter, s.cache, jnp.zeros_like(s.last_B),
                           eos_id=eos_id, pad_id=pad_id, depth=0)


def adaptive_run(drafter: adaptive.AdaptiveChain, env: drafter_lib.Env, s: SpecState, *,
                 eos_id: int, pad_id: int) -> SpecState:
  """Runs to completion in phases: each chain length has its own `while_loop`, which runs
  for as long as `drafter.choose` picks that length; an outer loop runs the lengths' loops
  one after the other until every row is done (a loop whose length is not chosen runs no
  step). The state flows from loop to loop in place: changing length costs a few scalar
  condition checks. (Selecting the loop with a `lax.switch` instead made XLA copy every
  layer's cache into the chosen branch at every change of length.)"""
  def run(i: int, v: drafter_lib.Drafter | None):
    one = functools.partial(ar_step, drafter.longest) if v is None else functools.partial(
        step, v)

    def body(s: SpecState) -> SpecState:
      a = s.drafter
      entered_B = (a.current != i) & s.progress.active_B  # a new phase of this length
      a = a.replace(current=jnp.int32(i), phases_B=a.phases_B + entered_B)
      out = one(env, s.replace(drafter=a.inner), eos_id=eos_id, pad_id=pad_id)
      accepted_B = jnp.sum(out.accepted_by_depth_BxD - s.accepted_by_depth_BxD, axis=1)
      return out.replace(drafter=drafter.observe(a, out.drafter, i, accepted_B,
                                                 s.progress.active_B))

    def cond(s: SpecState) -> jax.Array:
      return ~jnp.all(s.progress.done_B) & (drafter.choose(s.drafter) == i)
    return lambda s: jax.lax.while_loop(cond, body, s)

  loops = [run(i, v) for i, v in enumerate(drafter.variants)]

  def lengths(s: SpecState) -> SpecState:
    for one_length in loops:
      s = one_length(s)
    return s

  return jax.lax.while_loop(lambda s: ~jnp.all(s.progress.done_B), lengths, s)


def verify_and_commit(drafter: drafter_lib.Drafter, env: drafter_lib.Env, s: SpecState,
                      tree, dstate, cache, other_B, *, eos_id: int, pad_id: int,
                      depth: int | None = None) -> SpecState:
  """The target forward over `tree`, verification, commit, and the drafter's update."""
  active_B = s.progress.active_B
  base_B = env.prompt_len_B + s.progress.num_generated_B - 1
  # An id outside the vocabulary would embed as NaN, whose keys/values in the cache's stale
  # slots reach every later step through the masked products (0 * NaN): the forward reads
  # it as 0; the verifier, which sees the id itself, never accepts it.
  V = env.target.cfg.vocab_size
  bad_B = jnp.any(tree.valid_BxT & ((tree.tokens_BxT < 0) | (tree.tokens_BxT >= V)), axis=1)
  out, dstate = drafter.target_forward(
      env, dstate, cache, tree.replace(tokens_BxT=jnp.clip(tree.tokens_BxT, 0, V - 1)),
      base_B, active_B)
  verdict = verify_lib.verify(tree, out.logits_BxTxV, sampling=env.sampling, mode=env.mode,
                              depth=drafter.max_depth if depth is None else depth,
                              row_keys_B=env.row_keys_B, base_B=base_B, chain=True
                              if depth == 0 else drafter.is_chain, typical=env.typical)
  room_B = env.max_new_tokens - s.progress.num_generated_B
  count_B, hit_eos_B = base.truncate_at_eos(verdict.new_BxD1, verdict.accepted_B + 1, room_B,
                                            eos_id)
  count_B = jnp.where(active_B, count_B, 0)
  cache = verify_lib.commit_accepted(out.cache, base_B, verdict.path_BxD1, count_B,
                                     chain=drafter.is_chain,
                                     step_states=getattr(out, 'step_states', None),
                                     defer=s.cache.moves is not None)
  new_BxD1 = jnp.where(active_B[:, None], verdict.new_BxD1, pad_id)
  progress = s.progress.count(active_B, other_B=other_B, committed_B=count_B).commit(
      new_BxD1, count_B, hit_eos_B, env.max_new_tokens)
  last_B = jnp.where(active_B, jnp.take_along_axis(
      verdict.new_BxD1, jnp.maximum(count_B - 1, 0)[:, None], axis=1)[:, 0], s.last_B)
  dstate = drafter.update(env, dstate, drafter_lib.Step(
      tree=tree, out=out, verdict=verdict, keep_B=count_B, base_B=base_B, active_B=active_B))
  act = active_B.astype(jnp.int32)
  D = s.accepted_by_depth_BxD.shape[1]
  reached_BxD = (verdict.accepted_B[:, None] >= jnp.arange(1, D + 1)[None, :]).astype(jnp.int32)
  drafted_B = jnp.sum(tree.valid_BxT[:, 1:], axis=1).astype(jnp.int32)
  return SpecState(
      cache=cache, last_B=last_B, progress=progress,
      accepted_by_depth_BxD=s.accepted_by_depth_BxD + reached_BxD * act[:, None],
      steps_B=s.steps_B + act, drafted_B=s.drafted_B + drafted_B * act,
      bad_steps_B=s.bad_steps_B + (bad_B & active_B).astype(jnp.int32), drafter=dstate)


def generate(drafter: drafter_lib.Drafter, env: drafter_lib.Env, *, eos_id: int,
             pad_id: int) -> base.DecodeResult:
  """Runs the loop to completion and packs the result with its statistics."""
  state = init_state(drafter, env, eos_id=eos_id, pad_id=pad_id)
  if isinstance(drafter, adaptive.AdaptiveChain):
    return result(drafter, adaptive_run(drafter, env, state, eos_id=eos_id, pad_id=pad_id))
  state = jax.lax.while_loop(lambda s: ~jnp.all(s.progress.done_B),
                             lambda s: step(drafter, env, s, eos_id=eos_id, pad_id=pad_id),
                             state)
  return result(drafter, state)


def result(drafter: drafter_lib.Drafter, s: SpecState) -> base.DecodeResult:
  extra = {'spec_steps': s.steps_B, 'accepted_by_depth': s.accepted_by_depth_BxD,
           'drafted_tokens': s.drafted_B, 'bad_draft_steps': s.bad_steps_B}
  extra.update(drafter.extra_stats(s.drafter))
  return s.progress.result(extra)
