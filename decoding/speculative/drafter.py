"""The drafter interface: what the speculative loop asks of a draft source.

A drafter is a frozen dataclass (static under jit). Per step the loop calls

  tree, state, cache, other_B = drafter.propose(env, state, cache, root_B, base_B, active_B)
  out, state = drafter.target_forward(env, state, cache, tree, base_B, active_B)
  ... verification and commit (shared, decoding/speculative/verify.py) ...
  state = drafter.update(env, state, step)

`root_B` is each row's newest committed token (tree node 0) at position `base_B`, which is
also the number of committed slots in the target's cache. Drafters keep whatever they need
(a draft model's cache, a successor table, an n-gram pool) in their own state pytree.
Self-speculative drafters (early exit) also write the target's cache while drafting, so
`propose` receives and returns it; the others return it unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp

from decoding import base
from decoding import sampling as sampling_lib
from decoding.speculative import settings
from decoding.speculative import trees
from decoding.speculative import verify as verify_lib
from models import cache as cache_lib
from models import transformer as transformer_lib
import pallas_kernels.common as kernel_common


UNROLL_MAX = 8  # 'auto' unrolls drafting loops of at most this many passes


def draft_loop(cond, body, carry, iterations: int, kind: str, can_stop_early: bool):
  """Runs a drafting loop of at most `iterations` passes of `body` (carry -> carry; the body
  advances its own counter and must leave every row it has stopped unchanged).

  kind 'while': `lax.while_loop(cond, ...)`, which ends as soon as `cond` is false (no row
  drafts on): no wasted draft forwards, but on a GPU every iteration copies the predicate to
  the host and waits for it. 'fixed': exactly `iterations` passes (`fori_loop` with a static
  trip count, which XLA knows, so it need not read a predicate back each iteration); rows
  that stopped pass through the body unchanged. 'unroll': the same passes written out one
  after the other (no loop: no counter or condition ops, and XLA may fuse across passes; the
  program holds `iterations` copies of the body). 'auto': 'unroll' up to UNROLL_MAX passes,
  else 'fixed', unless rows can stop early (`can_stop_early`: a confidence threshold or a
  per-row length), where 'while' ends the loop and saves whole draft forwards. Without an
  early stop the while loop could only end once every row is inactive, which the
  speculative loop never lets a step reach, so all kinds give the same result. Which is
  fastest on a GPU is measured by gpu_suite.sh's `graphs` stage; compiled for XLA:CPU, a
  `tiny` step of a chain of 4 oracle drafts executes 189 operations unrolled against 221 in
  the fixed loop (`benchmarks.step_ops`).
  """
  settings.check_draft_loop(kind)
  if kind == 'while' or (kind == 'auto' and can_stop_early):
    return jax.lax.while_loop(cond, body, carry)
  if kind == 'unroll' or (kind == 'auto' and iterations <= UNROLL_MAX):
    for _ in range(iterations):
      carry = body(carry)
    return carry
  return jax.lax.fori_loop(0, iterations, lambda _, c: body(c), carry)


@dataclasses.dataclass
class Env:
  """Everything fixed during one generation (arrays are traced values of the jit)."""
  models: base.Models
  params: dict[str, Any]
  sampling: sampling_lib.SamplingConfig
  mode: str  # verification rule
  row_keys_B: jax.Array
  prompt_BxP: jax.Array
  prompt_len_B: jax.Array
  cache_size: int
  max_new_tokens: int
  typical: tuple[float, float] | None = None  # (epsilon, alpha): typical acceptance (lossy)

  @property
  def target(self) -> transformer_lib.Transformer:
    return self.models.target

  @property
  def target_params(self) -> Any:
    return self.params['target']


@flax.struct.dataclass
class Step:
  """What the loop tells `update` after verifying a step.

  tree: the verified tree; out: the target's forward over it; verdict: verify.Verdict;
  keep_B: nodes of the accepted path committed (root included; 0 for inactive rows);
  base_B: the root's position; new_base_B = base + keep (the next root's position).
  """
  tree: trees.Tree
  out: transformer_lib.ModelOutput
  verdict: verify_lib.Verdict
  keep_B: jax.Array
  base_B: jax.Array
  active_B: jax.Array

  @property
  def new_base_B(self) -> jax.Array:
    return self.base_B + self.keep_B


@dataclasses.dataclass(frozen=True)
class Drafter:
  """Base class. Subclasses set `kind`, `has_q` and the static tree bounds."""
  kind: ClassVar[str] = ''
  has_q: ClassVar[bool] = False  # proposes with a distribution q (else deterministic rule)
  prefill_forwards: ClassVar[int] = 0  # other forwards spent in `init` (a draft's prefill)
  # What the adaptive draft length (adaptive.py) may do with this drafter; a subclass
  # overrides them as class attributes or properties.
  shares_state_across_lengths: ClassVar[bool] = True  # its state fits every chain length
  ar_step_ok: ClassVar[bool] = True  # a step may skip `propose` (the drafter need not see it)
  forwards_root_only: ClassVar[bool] = False  # its own target_forward takes a root-only tree

  @property
  def max_nodes(self) -> int:
    """T: tree nodes including the root (static)."""
    raise NotImplementedError

  @property
  def max_depth(self) -> int:
    """D: deepest drafted token (static)."""
    raise NotImplementedError

  @property
  def max_children(self) -> int:
    """K: most children a node has (static)."""
    raise NotImplementedError

  @property
  def is_chain(self) -> bool:
    return False

  @property
  def hist_size(self) -> int:
    """Histogram bins of committed tokens per step (0 .. max_depth + 1)."""
    return self.max_depth + 2

  def extra_cache_slots(self) -> int:
    """Cache slots a step may write past the committed tokens (tree, draft candidates)."""
    return self.max_nodes

  def extra_models(self) -> dict[str, str]:
    return {}

  def draft_vocab_sizes(self) -> tuple[int, ...]:
    """`base.Decoder.draft_vocab_sizes`: (N,) for a drafter with a `draft_vocab` N > 0 setting,
    else none."""
    n = getattr(self, 'draft_vocab', 0)
    return (n,) if n else ()

  def with_draft_vocab(self, params: dict[str, Any]) -> dict[str, Any]:
    """The params it drafts with: a trained drafter given a decode-time draft vocabulary
    (`models.draft_vocab.at_decode_time`) gets the set as its own; default unchanged."""
    return params

  def resolve(self, models: base.Models) -> 'Drafter':
    """Fills settings that depend on the models (e.g. the exit layer); default: self."""
    del models
    return self

  def check(self, models: base.Models, params: dict[str, Any]) -> None:
    """Clear errors for models/params that do not fit (called at trace time)."""
    del models, params

  def init(self, env: Env, prefill: transformer_lib.ModelOutput, first_B: jax.Array) -> Any:
    """Drafter state after the target's prefill and first sampled token."""
    del env, prefill, first_B
    return ()

  def prefill_kwargs(self) -> dict[str, Any]:
    """Extra arguments of the target's prefill call (e.g. return_hidden for early exit)."""
    return {}

  def step_cost(self, target_cost: float) -> float:
    """A step's cost relative to an AR step, given its target forward's (`target_cost`, the
    forward over the step's tokens relative to one over 1): that forward alone by default; a
    drafter whose drafting runs the target's own layers adds them (early exit)."""
    return target_cost

  def propose(self, env: Env, state: Any, cache: cache_lib.Cache, root_B: jax.Array,
              base_B: jax.Array, active_B: jax.Array
              ) -> tuple[trees.Tree, Any, cache_lib.Cache, jax.Array]:
    """(tree to verify, state, target cache, other forwards this step [B])."""
    raise NotImplementedError

  def target_forward(self, env: Env, state: Any, cache: cache_lib.Cache, tree: trees.Tree,
                     base_B: jax.Array, active_B: jax.Array
                     ) -> tuple[transformer_lib.ModelOutput, Any]:
    """The target's forward over the tree (default: all layers, tree attention)."""
    out = verify_lib.forward_tree(env.target, env.target_params, cache, tree, base_B, active_B,
                                  chain=self.is_chain)
    return out, state

  def update(self, env: Env, state: Any, step: Step) -> Any:
    """Drafter state after a verified step (default: unchanged)."""
    del env, step
    return state

  def extra_stats(self, state: Any) -> dict[str, jax.Array]:
    """Drafter-specific statistics reported in DecodeResult.extra ([B, ...] arrays)."""
    del state
    return {}


@dataclasses.dataclass(frozen=True)
class ChainDrafter(Drafter):
  """A drafter proposing a chain; its length is the setting named by `chain_field`."""
  chain_field: ClassVar[str] = 'gamma'

  @property
  def max_nodes(self) -> int:
    return getattr(self, self.chain_field) + 1

  @property
  def max_depth(self) -> int:
    return getattr(self, self.chain_field)

  @property
  def max_children(self) -> int:
    return 1

  @property
  def is_chain(self) -> bool:
    return True


@dataclasses.dataclass(frozen=True)
class TemplateDrafter(Drafter):
  """A drafter over a static tree: its bounds are those of its `template` field."""
  template: trees.Template

  @property
  def max_nodes(self) -> int:
    return self.template.size

  @property
  def max_depth(self) -> int:
    return self.template.max_depth

  @property
  def max_children(self) -> int:
    return self.template.max_children

  @property
  def is_chain(self) -> bool:
    return self.template.is_chain


def vocab_size(module: Any) -> int:
  return module.cfg.vocab_size


def check_vocab(name: str, module: Any, target: transformer_lib.Transformer) -> None:
  """Draft and target must share the vocabulary (the same tokenizer)."""
  if vocab_size(module) != target.cfg.vocab_size:
    raise ValueError(f'The {name} has a vocabulary of {vocab_size(module)} tokens but the '
                     f'target has {target.cfg.vocab_size}: speculative decoding needs the '
                     'same tokenizer for draft and target.')


def draft_keys(env: Env, positions_B: jax.Array) -> jax.Array:
  """Keys for drafting the token at `positions` (independent of the accept tests)."""
  return verify_lib.position_keys(env.row_keys_B, positions_B, verify_lib.SALT_DRAFT)


def top_children(logits_BxNxV: jax.Array, k: int) -> jax.Array:
  """[B, N, k] the k highest-scoring tokens (ties: lowest id), for deterministic drafts."""
  return kernel_common.top_k(logits_BxNxV.astype(jnp.float32), k)[1].astype(jnp.int32)
