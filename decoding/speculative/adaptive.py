"""Adaptive draft length: each step picks its chain length by recent acceptance and cost.

A fixed chain length is right for one acceptance rate on one machine only. Where a forward
over T tokens costs about T forwards over one (a small model on a CPU) a draft pays only
when it is very likely accepted; where T = 8 costs little more than T = 1 (memory-bound
decoding) long drafts pay even at middling acceptance. `AdaptiveChain` holds the same
drafter at several chain lengths (the *variants*, gamma_0 < ... < gamma_max, gamma = 0 being a
plain AR step where the drafter allows it) and, before every step, chooses the one with the
most expected tokens per unit of cost:

  score(g) = E[tokens | alpha, g] / s(g),   E = 1 + alpha + ... + alpha^g

where s(g) is the cost of a step relative to an AR step: c(g + 1), the cost of a target
forward over g + 1 tokens relative to T = 1 (`costs`, measured on this machine by
`calibrate` when the decoder is compiled, or given), plus, for a drafter that drafts
through the target's own layers (early exit), those layers' work (`step_costs`); alpha is
the acceptance rate of recent drafted tokens, a discounted count over the batch:

  alpha = (accepted + 1/2) / (tests + 1),   accepted, tests <- decay * (accepted, tests) + step's

(each step adds its accepted drafts, and one rejected test when the chain stopped early).
Whether to draft at all is judged optimistically: the best drafting length's score at
alpha + `explore` standard errors (an upper confidence bound) against an AR step's; which
length drafts is judged at alpha (`scores`). Without evidence the bound is 1, so a drafter
whose break-even acceptance is above 1/2 is tried at all (with the estimate alone it would
never be: no drafts, no evidence); after AR steps only a slower discount acts, so the counts
shrink, the bound grows, and drafting is tried again now and then. A length is kept until
another scores `margin` better (an AR step: until it scores better at all), and each
length runs as its own inner loop (loop.adaptive_run), the state flowing from one to the
next in place, so changing length costs only condition checks. The choice depends only
on past steps, so every step is an ordinary lossless speculative step and the output is
exact (greedy: AR's tokens; sampled: the target distribution).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from decoding import forward_timing
from decoding.speculative import drafter as drafter_lib
from decoding.speculative import trees

AR = 0  # the chain length of a plain AR step
ROOT_ONLY = trees.Template(parents=(-1,), ranks=(0,))  # the tree of an AR step


@flax.struct.dataclass
class AdaptState:
  """inner: the drafter's own state (the same structure for every variant).
  accepted, tests: discounted accepted drafts and accept tests over the batch (scalars).
  current: the variant running now (-1 before the first step).
  choices_BxV: steps each row ran with each variant (statistics).
  phases_B: runs of one length (each after the first a change of length) while the row was
    active (statistics)."""
  inner: Any
  accepted: jax.Array
  tests: jax.Array
  current: jax.Array
  choices_BxV: jax.Array
  phases_B: jax.Array


def ladder(gamma: int, *, with_ar: bool) -> tuple[int, ...]:
  """The chain lengths tried for a longest chain `gamma`: 0 (AR, if allowed), 1 .. 4, then
  about x1.5 steps up to gamma (few variants: each is compiled)."""
  out = [AR] if with_ar else []
  g = 1
  while g < gamma:
    out.append(g)
    g = g + 1 if g < 4 else int(g * 1.5)
  return tuple(out) + (gamma,)


def with_chain_length(d: drafter_lib.Drafter, gamma: int) -> drafter_lib.Drafter:
  """The same drafter drafting a chain of `gamma` tokens (a drafter with a `state_nodes`
  field keeps the per-node state of its longest chain, so that all lengths share it)."""
  if not d.shares_state_across_lengths:
    raise ValueError(f'The {d.kind!r} drafter keeps a state that depends on its chain '
                     'length, so its draft length cannot change per step (adaptive=0).')
  fields = {f.name for f in dataclasses.fields(d)}
  keep = {'state_nodes': max(d.max_nodes, d.state_nodes)} if 'state_nodes' in fields else {}
  if isinstance(d, drafter_lib.ChainDrafter):
    return dataclasses.replace(d, **{d.chain_field: gamma}, **keep)
  if d.is_chain and 'template' in fields:
    return dataclasses.replace(d, template=trees.chain(gamma), **keep)
  raise ValueError(f'Adaptive draft length needs a drafter of chains; {d.kind!r} drafts a '
                   'tree here (set tree=chain, or adaptive=0).')


def allows_ar_step(d: drafter_lib.Drafter) -> bool:
  """Whether a step may skip drafting: the target forward does not rely on `propose` (or
  the drafter says its forward takes the root alone, `forwards_root_only`), and the drafter
  does not need to see every token through `propose` (`ar_step_ok`)."""
  return d.ar_step_ok and (type(d).target_forward is drafter_lib.Drafter.target_forward
                           or d.forwards_root_only)


def step_costs(variants: Sequence[drafter_lib.Drafter | None],
               costs: Sequence[float]) -> tuple[float, ...]:
  """A step's cost relative to an AR step for each variant (`Drafter.step_cost`) from its
  target forward's (`costs`); an AR step (None) costs its forward."""
  return tuple(float(c) if v is None else float(v.step_cost(c)) for v, c in zip(variants, costs))


def expected_tokens(alpha: jax.Array, gammas: Sequence[int]) -> jax.Array:
  """[V] 1 + alpha + ... + alpha^g for each chain length g (iid acceptance)."""
  g = jnp.asarray(gammas, jnp.float32)
  a = jnp.clip(alpha, 0.0, 0.999)
  return (1.0 - a ** (g + 1.0)) / (1.0 - a)


@dataclasses.dataclass(frozen=True)
class AdaptiveChain(drafter_lib.Drafter):
  """One drafter at several chain lengths; `choose` picks one per step (module docstring).

  variants: the drafter at lengths `gammas` (None for gamma = 0, the AR step).
  costs: c(g + 1) / c(1) for each variant; () = all 1 (then the longest chain always wins).
  decay: discount of the counts per drafting step; ar_decay: per AR step (slower, so that
    drafting is retried now and then but not every few steps).
  margin: another length is chosen only when its score beats the current one's by this
    factor (so that the length does not flap between two of nearly equal value); an AR
    step as soon as it scores higher (AR phases run long, and a drafting step's
    costs beyond the forward, such as a drafter's own updates, are not in its score).
  explore: standard errors of the acceptance estimate added to it (0 = the estimate alone).
  """
  variants: tuple[drafter_lib.Drafter | None, ...]
  gammas: tuple[int, ...]
  costs: tuple[float, ...] = ()
  decay: float = 0.9
  ar_decay: float = 0.97
  margin: float = 1.05
  explore: float = 1.0

  @classmethod
  def of(cls, d: drafter_lib.Drafter, costs: Sequence[float] = (), decay: float = 0.9
         ) -> 'AdaptiveChain':
    longest = d.max_depth
    gammas = ladder(longest, with_ar=allows_ar_step(d))
    variants = tuple(None if g == AR else with_chain_length(d, g) for g in gammas)
    if costs and len(costs) != len(gammas):
      raise ValueError(f'costs: one relative forward cost per chain length {gammas} (forwards '
                       f'over {[g + 1 for g in gammas]} tokens), got {len(costs)}.')
    return cls(variants=variants, gammas=gammas, costs=tuple(costs), decay=decay)

  # The longest variant stands for the family: bounds, cache room, models, prefill.
  @property
  def longest(self) -> drafter_lib.Drafter:
    return self.variants[-1]

  @property
  def kind(self) -> str:  # pytype: disable=signature-mismatch
    return self.longest.kind

  @property
  def has_q(self) -> bool:  # pytype: disable=signature-mismatch
    return self.longest.has_q

  @property
  def prefill_forwards(self) -> int:  # pytype: disable=signature-mismatch
    return self.longest.prefill_forwards

  @property
  def max_nodes(self) -> int:
    return self.longest.max_nodes

  @property
  def max_depth(self) -> int:
    return self.longest.max_depth

  @property
  def max_children(self) -> int:
    return 1

  @property
  def is_chain(self) -> bool:
    return True

  def extra_cache_slots(self) -> int:
    return self.longest.extra_cache_slots()

  def extra_models(self) -> dict[str, str]:
    return self.longest.extra_models()

  def draft_vocab_sizes(self) -> tuple[int, ...]:
    return self.longest.draft_vocab_sizes()

  def with_draft_vocab(self, params):
    return self.longest.with_draft_vocab(params)

  def prefill_kwargs(self) -> dict[str, Any]:
    return self.longest.prefill_kwargs()

  def resolve(self, models):
    return dataclasses.replace(self, variants=tuple(
        None if v is None else v.resolve(models) for v in self.variants))

  def check(self, models, params):
    self.longest.check(models, params)

  def init(self, env, prefill, first_B):
    inner = self.longest.init(env, prefill, first_B)
    want = jax.tree.structure(inner), [(x.shape, x.dtype) for x in jax.tree.leaves(inner)]
    for v in self.variants[:-1]:
      if v is None:
        continue
      s = jax.eval_shape(lambda v=v: v.init(env, prefill, first_B))
      if (jax.tree.structure(s), [(x.shape, x.dtype) for x in jax.tree.leaves(s)]) != want:
        raise ValueError(f'The {self.kind!r} drafter keeps a state that depends on its chain '
                         'length, so its draft length cannot change per step (adaptive=0).')
    B = first_B.shape[0]
    return AdaptState(inner=inner, accepted=jnp.zeros((), jnp.float32),
                      tests=jnp.zeros((), jnp.float32), current=jnp.full((), -1, jnp.int32),
                      choices_BxV=jnp.zeros((B, len(self.gammas)), jnp.int32),
                      phases_B=jnp.zeros((B,), jnp.int32))

  def extra_stats(self, state):
    out = dict(self.longest.extra_stats(state.inner))
    out['adaptive_steps'] = state.choices_BxV  # [B, V] steps per chain length (`gammas`)
    out['adaptive_phases'] = state.phases_B     # [B] runs of one length (changes + 1)
    return out

  # ---------------------------------------------------------------- the policy
  def estimate(self, state: AdaptState) -> jax.Array:
    """The acceptance estimate a = (accepted + 1/2) / (tests + 1)."""
    return (state.accepted + 0.5) / (state.tests + 1.0)

  def alpha(self, state: AdaptState) -> jax.Array:
    """The optimistic acceptance: the estimate plus `explore` standard errors (at most 1)."""
    a = self.estimate(state)
    return jnp.minimum(a + self.explore * jnp.sqrt(a * (1.0 - a) / (state.tests + 1.0)), 1.0)

  def scores(self, state: AdaptState) -> jax.Array:
    """[V] the value of each chain length: expected tokens per unit of step cost
    (`step_costs`) at the estimate, the drafting lengths' values scaled by the best drafting
    length's gain from the optimistic acceptance. So drafting as a whole is weighed against
    an AR step at the optimistic bound (drafting gets tried), and among drafting lengths the
    estimate ranks them (an exploring step drafts the length the evidence favours, not the
    longest)."""
    costs = jnp.asarray(step_costs(self.variants, self.costs or (1.0,) * len(self.gammas)),
                        jnp.float32)
    est_V = expected_tokens(self.estimate(state), self.gammas) / costs
    opt_V = expected_tokens(self.alpha(state), self.gammas) / costs
    draft_V = jnp.asarray([g != AR for g in self.gammas])
    gain = (jnp.max(jnp.where(draft_V, opt_V, 0.0))
            / jnp.max(jnp.where(draft_V, est_V, 0.0)))
    return jnp.where(draft_V, est_V * gain, est_V)

  def choose(self, state: AdaptState) -> jax.Array:
    """The variant to run (a scalar): the best score, unless the current one is within
    `margin` of it (an AR step, the best, replaces any current length that scores lower)."""
    score_V = self.scores(state)
    best = jnp.argmax(score_V).astype(jnp.int32)
    cur = jnp.maximum(state.current, 0)
    to_ar = jnp.asarray(self.gammas)[best] == AR
    keep = (state.current >= 0) & (score_V[best] <= jnp.where(to_ar, 1.0, self.margin)
                                   * score_V[cur])
    return jnp.where(keep, state.current, best)

  def observe(self, state: AdaptState, inner: Any, index: int, accepted_B: jax.Array,
              active_B: jax.Array) -> AdaptState:
    """Discounts the counts and adds this step's accept tests (none for an AR step)."""
    g = self.gammas[index]
    if g == AR:
      acc = tests = jnp.zeros((), jnp.float32)
      decay = self.ar_decay
    else:
      acc = jnp.sum(jnp.where(active_B, accepted_B, 0)).astype(jnp.float32)
      tests = acc + jnp.sum(active_B & (accepted_B < g)).astype(jnp.float32)
      decay = self.decay
    onehot_1xV = (jnp.arange(len(self.gammas)) == index)[None].astype(jnp.int32)
    return state.replace(inner=inner, accepted=decay * state.accepted + acc,
                         tests=decay * state.tests + tests,
                         choices_BxV=state.choices_BxV + onehot_1xV * active_B[:, None])


def wrap(d: drafter_lib.Drafter, adaptive: bool, costs: str) -> drafter_lib.Drafter:
  """The decoder settings `adaptive`, `costs` ('1,1.3,...'; '/' also separates) applied."""
  if not adaptive:
    if costs:
      raise ValueError('costs is a setting of the adaptive draft length; add adaptive=1.')
    return d
  return AdaptiveChain.of(d, costs=tuple(float(c) for c in costs.replace('/', ',').split(','))
                          if costs else ())


def costs_to_measure(d: drafter_lib.Drafter, costs: str) -> bool:
  """Whether `d` is adaptive without given costs (`Decoder.prepare` measures them)."""
  return isinstance(d, AdaptiveChain) and not costs


def ar_tree(root_B: jax.Array, active_B: jax.Array) -> trees.Tree:
  """The root alone: a step that drafts nothing."""
  return trees.from_template(ROOT_ONLY, root_B[:, None], active_B[:, None])


def calibrate(target: Any, params: Any, gammas: Sequence[int], *, batch: int,
              cache_size: int, seconds: float = 0.05, trials: int = 5) -> tuple[float, ...]:
  """c(g + 1) / c(1) for each chain length g: timed target forwards on this machine.

  Each cost is a `forward_timing.forward_probe` over g + 1 tokens (a compiled loop of about
  `seconds`) at batch `batch`, with about half the cache committed, best of `trials`; the
  probes run in turns, every length once per trial, so that a change of load on the machine
  falls on all of them alike rather than on the lengths timed last. Costs
  are made non-decreasing in T (a longer forward never costs less: what looks cheaper is
  noise) and rounded to 2 decimals, so that close measurements give the same (static, hashed)
  decoder and the same compiled program.
  """
  longest = max(gammas) + 1
  context = max(min(cache_size // 2, cache_size - longest), 0)
  probes = {T: forward_timing.forward_probe(target, params, batch=batch, tokens=T,
                                            cache_size=cache_size, context=context,
                                            min_seconds=seconds)
            for T in sorted({1} | {g + 1 for g in gammas})}
  per_forward = {T: float('inf') for T in probes}
  for _ in range(trials):
    for T, probe in probes.items():
      per_forward[T] = min(per_forward[T], probe())
  relative, worst = {}, 1.0
  for T in sorted(per_forward):
    worst = max(worst, per_forward[T] / per_forward[1])
    relative[T] = worst
  return tuple(round(relative[g + 1], 2) for g in gammas)
