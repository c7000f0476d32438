"""Parallel Prompt Decoding (PPD, arXiv 2405.18628): trained prompt tokens draft a token tree,
riding along in the forward that verifies the previous one. Decoder `ppd`.

The prompt tokens are a training extra of the target's run (params['ppd'] = {'prompts':
[K, D]}, trained by configs/ppd.py, see models/ppd.py). Per step:

  init            after the prefill, one forward of gamma prompt tokens attached to the last
                  prompt token gives the first step's candidates (an 'other' forward).
  propose         node at depth d, rank r = the r-th best token of prompt d - 1 attached to
                  the last accepted node of the previous step (no forward of its own).
  target_forward  one forward over the tree's T nodes plus gamma prompt tokens attached to
                  every node (T (1 + gamma) tokens; prompt i of node n at position
                  pos(n) + 1 + i sees n's path and the earlier prompts of n). The tree's
                  logits verify; each node's prompt logits give the candidates the next step
                  drafts from, should that node end the accepted path. Prompt tokens are
                  written to cache slots after the tree's and never committed.
  update          keeps the candidates of the last accepted node.

Drafts are deterministic (top-r tokens), verified by the deterministic rule: lossless under
greedy and sampling.

Tree sizing (the paper's hardware-aware sparse tree):
  `accept_tree(nodes, accuracy)`  the tree maximising the expected accepted length when a
                  node of depth d and rank r is right with the measured probability
                  accuracy[d - 1][r] (independently along a path);
  `choose_nodes(...)`  the node budget maximising expected tokens per unit of time,
                  (1 + E[accepted]) / cost(forward over (1 + nodes)(1 + gamma) tokens), from a
                  measured forward-cost curve (decoding/forward_timing.py).
  `measure_accuracy(...)`  top-r accuracy of each prompt position against the target's
                  greedy token on given text.
"""

from __future__ import annotations

import dataclasses
import heapq
from typing import Any, ClassVar, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from decoding import forward_timing
from decoding import registry
from decoding.speculative import decoders
from decoding.speculative import drafter as drafter_lib
from decoding.speculative import trees
from decoding.speculative import verify as verify_lib
from models import heads as heads_lib
from models import kind as kind_lib
from models import masks
from models import ppd as ppd_lib
import pallas_kernels.common as kernel_common

# Top-r accuracy per prompt position when none is measured (depth 1, 2, 3, ...).
PPD_PROFILE = ((0.6, 0.12, 0.05, 0.03, 0.02), (0.4, 0.1, 0.05, 0.03, 0.02),
               (0.3, 0.08, 0.04, 0.02, 0.02), (0.2, 0.06, 0.03, 0.02, 0.01))
# Node budgets the hardware-aware sizing chooses among.
BUDGETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


# ------------------------------------------------------------------------ tree sizing
def _check_accuracy(accuracy: Sequence[Sequence[float]]) -> list[list[float]]:
  acc = [[float(a) for a in row] for row in accuracy]
  if not acc or any(not row for row in acc) or any(not 0 <= a <= 1 for r in acc for a in r):
    raise ValueError(f'accuracy must be one non-empty row of probabilities in [0, 1] per '
                     f'prompt position, got {accuracy}.')
  return acc


def accept_tree(nodes: int, accuracy: Sequence[Sequence[float]]) -> trees.Template:
  """The `nodes`-node tree (plus root, breadth-first) maximising the expected accepted length
  sum_n prod_{m on the path to n} accuracy[depth(m) - 1][rank(m)].

  A node's value never exceeds its parent's (accuracies are <= 1), so the best connected
  set of `nodes` nodes is taken greedily: a heap of candidates, each popped node adding all
  its children (every rank of the next prompt position; ranks need not be sorted by
  accuracy). Depth is bounded by len(accuracy), width by its rows' lengths.
  """
  acc = _check_accuracy(accuracy)
  if nodes < 1:
    raise ValueError(f'A PPD tree needs nodes >= 1, got {nodes}.')
  parents, ranks, depth = [-1], [0], [0]
  heap, counter = [], 0

  def push_children(node, value):
    nonlocal counter
    d = depth[node]
    if d < len(acc):
      for r, a in enumerate(acc[d]):
        heapq.heappush(heap, (-value * a, counter, node, r))
        counter += 1

  push_children(0, 1.0)
  while heap and len(parents) <= nodes:
    neg, _, parent, rank = heapq.heappop(heap)
    parents.append(parent)
    ranks.append(rank)
    depth.append(depth[parent] + 1)
    push_children(len(parents) - 1, -neg)
  return _breadth_first(parents, ranks)


def _breadth_first(parents: list[int], ranks: list[int]) -> trees.Template:
  depth = [0] * len(parents)
  for i in range(1, len(parents)):
    depth[i] = depth[parents[i]] + 1
  order = sorted(range(len(parents)), key=lambda i: (depth[i], i))
  new = {old: k for k, old in enumerate(order)}
  return trees.Template(parents=tuple(-1 if i == 0 else new[parents[i]] for i in order),
                        ranks=tuple(ranks[i] for i in order))


def expected_accept(template: trees.Template, accuracy: Sequence[Sequence[float]]) -> float:
  """Expected accepted drafts of `template` under the independence model of `accept_tree`
  (0 for nodes beyond the measured depth or rank)."""
  acc = _check_accuracy(accuracy)
  value = [1.0] * template.size
  depths = template.depths
  for i in range(1, template.size):
    d, r = depths[i] - 1, template.ranks[i]
    a = acc[d][r] if d < len(acc) and r < len(acc[d]) else 0.0
    value[i] = value[template.parents[i]] * a
  return float(sum(value[1:]))


def forward_tokens(nodes: int, gamma: int) -> int:
  """Tokens of one PPD forward: root + nodes, each with gamma prompt tokens attached."""
  return (1 + nodes) * (1 + gamma)


def choose_nodes(accuracy: Sequence[Sequence[float]], gamma: int,
                 cost_of_tokens: Mapping[int, float], budgets: Sequence[int] = BUDGETS
                 ) -> tuple[int, dict[int, float]]:
  """The node budget with the most expected tokens per unit of time, and each budget's
  value (1 + E[accepted](accept_tree(n))) / cost(forward_tokens(n, gamma)). `cost_of_tokens`
  maps a forward's token count to its cost (any unit) and must cover every budget's."""
  values = {}
  for n in budgets:
    T = forward_tokens(n, gamma)
    if T not in cost_of_tokens:
      raise ValueError(f'No measured cost for a forward over {T} tokens (budget {n}).')
    tpl = accept_tree(n, accuracy[:gamma])
    values[n] = (1.0 + expected_accept(tpl, accuracy[:gamma])) / cost_of_tokens[T]
  best = max(values, key=lambda n: (values[n], -n))
  return best, values


def measure_costs(model: Any, params: Any, gamma: int, budgets: Sequence[int], *, batch: int,
                  cache_size: int, seconds: float = 0.05, repeats: int = 3
                  ) -> dict[int, float]:
  """Relative cost c(T) / c(1) of one cached forward (explicit mask, as PPD runs it) over
  T = forward_tokens(n, gamma) tokens for each budget n, timed on this machine and made
  non-decreasing in T (a larger forward never costs less: what looks cheaper is noise)."""
  sizes = sorted({1} | {forward_tokens(n, gamma) for n in budgets})
  longest = sizes[-1]
  context = max(min(cache_size // 2, cache_size - longest), 0)
  t = {T: forward_timing.forward_time(model, params, batch=batch, tokens=T,
                                      cache_size=cache_size, context=context,
                                      min_seconds=seconds, repeats=repeats,
                                      explicit_mask=True)
       for T in sizes}
  out, worst = {}, 1.0
  for T in sizes:
    worst = max(worst, t[T] / t[1])
    out[T] = round(worst, 2)
  return out


def measure_accuracy(model: Any, model_params: Any, prompts_KxD: jax.Array,
                     tokens_BxT: jax.Array, ranks: int) -> np.ndarray:
  """[K, ranks]: share of positions where the target's greedy token equals prompt i's
  rank-r candidate (prompt i attached to token t, target argmax at t + 1 + i given the
  text up to there). `tokens_BxT`: held-out text (rows without padding)."""
  base, prompt = ppd_lib.forward_with_prompts(model, model_params, prompts_KxD, tokens_BxT)
  B, T, K, _ = prompt.shape
  top = jnp.argmax(base, -1)  # [B, T]
  cand = kernel_common.top_k(prompt, ranks)[1]  # [B, T, K, R]
  out = np.zeros((K, ranks))
  for i in range(K):
    n = T - 1 - i
    hit = cand[:, :n, i] == top[:, 1 + i:, None]
    out[i] = np.asarray(jnp.mean(hit.astype(jnp.float32), axis=(0, 1)))
  return out


def parse_accuracy(text: str) -> tuple[tuple[float, ...], ...]:
  """'0.6,0.1;0.4,0.1' -> ((0.6, 0.1), (0.4, 0.1)): rows per prompt position (';'), ranks
  (','; '/' on the command line). '' -> PPD_PROFILE."""
  if not text.strip():
    return PPD_PROFILE
  try:
    acc = tuple(tuple(float(x) for x in row.split(',')) for row in text.split(';'))
  except ValueError:
    raise ValueError(f"PPD accuracy {text!r}: use rows of top-r accuracies per prompt "
                     "position, e.g. '0.6,0.1;0.4,0.1' (',' written '/' in a --decoder "
                     'spec).') from None
  return tuple(tuple(r) for r in _check_accuracy(acc))


# ------------------------------------------------------------------------ drafter
@flax.struct.dataclass
class PPDState:
  """cand_BxGxR: top-R tokens of each prompt position at the last accepted node;
  ready_B: the row has candidates (an empty prompt has none before its first step);
  node_cand_BxTxGxR: the candidates of every node of the last verified tree."""
  cand_BxGxR: jax.Array
  ready_B: jax.Array
  node_cand_BxTxGxR: jax.Array


@dataclasses.dataclass(frozen=True)
class PPDDrafter(drafter_lib.TemplateDrafter):
  """See module docstring; the template's depth is gamma, the prompt tokens per node."""
  kind: ClassVar[str] = 'ppd'
  template: trees.Template = dataclasses.field(default_factory=lambda: trees.chain(3))

  @property
  def gamma(self) -> int:
    return self.template.max_depth

  def extra_cache_slots(self) -> int:
    return forward_tokens(self.template.size - 1, self.gamma)

  def check(self, models, params):
    K = ppd_lib.check_params(params, "The 'ppd' drafter",
                             kind_lib.train_heads_hint((ppd_lib.PPD,)))
    if self.gamma > K:
      raise ValueError(f'The PPD tree is {self.gamma} deep but the run has {K} prompt tokens; '
                       f'lower gamma (or the tree depth) to <= {K}.')
    if verify_lib.is_recurrent(models.target.cfg):
      raise ValueError('The ppd drafter attaches prompt tokens with an explicit attention '
                       'mask; targets with recurrent layers are not supported.')

  prefill_forwards: ClassVar[int] = 1  # the prompt tokens after the prompt (see `init`)

  def init(self, env, prefill, first_B):
    """The first step's candidates: the gamma prompt tokens attached to each row's last
    prompt token, one small forward on (a copy of) the prefill's cache, which is discarded.
    (A serving system would append them to the prefill itself.)"""
    B, T, G, R = first_B.shape[0], self.template.size, self.gamma, self.template.max_rank
    cfg = env.target.cfg
    plen = env.prompt_len_B.astype(jnp.int32)
    pos = plen[:, None] + jnp.arange(G, dtype=jnp.int32)[None]
    mask = masks.block_to_cache_mask(jnp.tril(jnp.ones((1, G, G), bool)), plen,
                                     prefill.cache.size)
    x = jnp.broadcast_to(env.params[ppd_lib.PPD]['prompts'][:G].astype(cfg.compute_dtype)[None],
                         (B, G, cfg.d_model))
    out = env.target.apply({'params': env.target_params}, None, pos, cache=prefill.cache,
                           write_slots_BxT=pos, attn_mask=mask, inputs_embeds_BxTxD=x)
    return PPDState(cand_BxGxR=drafter_lib.top_children(out.logits_BxTxV, R),
                    ready_B=plen > 0,
                    node_cand_BxTxGxR=jnp.zeros((B, T, G, R), jnp.int32))

  def propose(self, env, state, cache, root_B, base_B, active_B):
    tpl = self.template
    depth, ranks = np.asarray(tpl.depths), np.asarray(tpl.ranks)
    tok = state.cand_BxGxR[:, np.maximum(depth - 1, 0), ranks].at[:, 0].set(root_B)
    valid = jnp.broadcast_to((active_B & state.ready_B)[:, None], tok.shape)
    tree = trees.from_template(tpl, tok, valid)
    return tree, state, cache, jnp.zeros_like(base_B)

  def target_forward(self, env, state, cache, tree, base_B, active_B):
    B, T = tree.tokens_BxT.shape
    G, R = self.gamma, self.template.max_rank
    cfg = env.target.cfg
    live = tree.valid_BxT & active_B[:, None]
    node_pos = base_B[:, None] + tree.depth_BxT
    prompt_pos = node_pos[:, :, None] + 1 + jnp.arange(G, dtype=jnp.int32)[None, None]
    positions = jnp.concatenate([
        jnp.where(live, node_pos, -1),
        jnp.where(live[:, :, None], prompt_pos, -1).reshape(B, T * G)], axis=1)
    N = T * (1 + G)
    slots = base_B[:, None] + jnp.arange(N, dtype=jnp.int32)[None]
    local = ppd_lib.attach_mask(trees.ancestor_mask(tree), G)
    mask = masks.block_to_cache_mask(local, base_B, cache.size)
    x = ppd_lib.embed_with_prompts(heads_lib.input_embedding(env.target_params),
                                   tree.tokens_BxT, env.params[ppd_lib.PPD]['prompts'][:G],
                                   cfg.compute_dtype)
    out = env.target.apply({'params': env.target_params}, None, positions, cache=cache,
                           write_slots_BxT=slots, attn_mask=mask, inputs_embeds_BxTxD=x)
    prompt_logits = out.logits_BxTxV[:, T:]
    node_cand = drafter_lib.top_children(prompt_logits, R).reshape(B, T, G, R)
    out = out.replace(logits_BxTxV=out.logits_BxTxV[:, :T],
                      last_hidden_BxTxD=out.last_hidden_BxTxD[:, :T])
    return out, state.replace(node_cand_BxTxGxR=node_cand)

  def update(self, env, state, step):
    path, keep, act = step.verdict.path_BxD1, step.keep_B, step.active_B
    last = jnp.take_along_axis(path, jnp.maximum(keep - 1, 0)[:, None], 1)[:, 0]
    cand = jnp.take_along_axis(state.node_cand_BxTxGxR,
                               jnp.maximum(last, 0)[:, None, None, None], 1)[:, 0]
    ok = act & (keep > 0)
    return state.replace(cand_BxGxR=jnp.where(ok[:, None, None], cand, state.cand_BxGxR),
                         ready_B=state.ready_B | ok)


# ------------------------------------------------------------------------ decoder
@registry.register
@dataclasses.dataclass(frozen=True)
class PPDDecoder(decoders.HeadsDecoder):
  """PPD: trained prompt tokens draft a tree in the same forward that verifies the last one,
  the tree built from measured prompt accuracy and sized by measured forward cost (needs
  configs/ppd.py; lossless)."""
  name: ClassVar[str] = 'ppd'
  model_heads: ClassVar[tuple[str, ...]] = (ppd_lib.PPD,)
  drafter_type: ClassVar[type[drafter_lib.Drafter]] = PPDDrafter
  tree: str = 'static'         # static: accept_tree from `accuracy`; chain: gamma drafts
  gamma: int = 3               # tree depth = prompt tokens attached to every node
  tree_nodes: int = 8          # drafted nodes (static tree)
  auto_size: bool = True       # static trees: tree_nodes chosen among `budgets` by measured
                               # forward cost when the decoder is compiled (`choose_nodes`)
  accuracy: str = ''           # top-r accuracy per prompt position, '0.6,0.1;0.4,0.1'
                               # ('/' for ','); '' = PPD_PROFILE
  budgets: str = ''            # node budgets tree_nodes=0 chooses among ('' = BUDGETS)
  forward_costs: str = ''      # relative costs of those budgets' forwards ('' = measured)

  def accuracy_rows(self) -> tuple[tuple[float, ...], ...]:
    acc = parse_accuracy(self.accuracy)
    if len(acc) < self.gamma:
      raise ValueError(f'PPD accuracy has {len(acc)} prompt positions; gamma={self.gamma} '
                       'needs one row per depth.')
    return acc[:self.gamma]

  def budget_list(self) -> tuple[int, ...]:
    if not self.budgets.strip():
      return BUDGETS
    out = tuple(int(x) for x in self.budgets.split(','))
    if any(n < 1 for n in out):
      raise ValueError(f'PPD budgets must be positive, got {self.budgets!r}.')
    return out

  def make_drafter(self, mode):
    del mode  # deterministic drafts
    if self.adaptive:
      raise ValueError("The 'ppd' decoder has no adaptive chain length; its tree is sized "
                       'by measured forward cost (tree_nodes=0).')
    if self.tree == 'chain':
      return PPDDrafter(template=trees.chain(self.gamma))
    if self.tree != 'static':
      raise ValueError(f"The 'ppd' decoder drafts tree='static' or 'chain', got "
                       f'{self.tree!r}.')
    if self.branching:
      return PPDDrafter(template=trees.branching([int(w) for w in self.branching.split(',')]))
    return PPDDrafter(template=accept_tree(self.tree_nodes, self.accuracy_rows()))

  def prepare(self, models, params, *, batch, cache_size):
    """auto_size: tree_nodes = the budget with the most expected tokens per unit of time, from
    forward costs given (`forward_costs`) or measured on this machine (budgets whose forward
    exceeds half the cache are left out)."""
    if self.tree != 'static' or self.branching or not self.auto_size:
      return self
    budgets = self.budget_list()
    G = self.gamma
    if self.forward_costs.strip():
      costs = [float(c) for c in self.forward_costs.split(',')]
      if len(costs) != len(budgets):
        raise ValueError(f'forward_costs has {len(costs)} values for {len(budgets)} budgets '
                         f'({budgets}).')
      cost_of_tokens = {forward_tokens(n, G): c for n, c in zip(budgets, costs)}
    else:
      budgets = tuple(n for n in budgets if forward_tokens(n, G) <= cache_size // 2) or (
          min(budgets),)
      cost_of_tokens = measure_costs(models.target, params['target'], G, budgets,
                                     batch=batch, cache_size=cache_size)
    best, _ = choose_nodes(self.accuracy_rows(), G, cost_of_tokens, budgets)
    return dataclasses.replace(self, tree_nodes=best, auto_size=False)


decoders.DRAFTERS.add('ppd', PPDDecoder)
