"""The speculative decoders registered with `decoding.registry`.

One decoder class, `speculative`, whose settings pick the drafter, the tree and the verifier:

  sample.py --decoder=speculative --decoder_config.drafter=model \
      --decoder_config.draft_workdir=runs/draft --decoder_config.tree=dynamic

plus one registered name per drafter family with that drafter as default (so several can be
compared in one `--decoder=ar,prompt_lookup,token_recycling` run). Every one of them is
lossless: greedy output equals AR token for token (fp32) and sampled output follows the
target distribution exactly (tested).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax

from decoding import base
from decoding import registry
from decoding.speculative import draft_model
from decoding.speculative import drafter as drafter_lib
from decoding.speculative import early_exit
from decoding.speculative import head_drafters
from decoding.speculative import jacobi
from decoding.speculative import loop
from decoding.speculative import ngram
from decoding.speculative import trees

TREES = ('chain', 'static', 'dynamic')
VERIFIERS = ('auto', 'deterministic', 'iid', 'wor', 'kseq')
# Rank-acceptance profile for best-first static trees of a draft model (Sequoia-style).
DRAFT_PROFILE = (0.75, 0.12, 0.05, 0.03, 0.02, 0.015, 0.01, 0.01)

DrafterFactory = Callable[['SpeculativeDecoder'], drafter_lib.Drafter]
_DRAFTERS: dict[str, DrafterFactory] = {}


def register_drafter(name: str) -> Callable[[DrafterFactory], DrafterFactory]:
  """Registers `factory(decoder) -> Drafter` under `name` (the `drafter` setting)."""
  def wrap(factory):
    if name in _DRAFTERS:
      raise ValueError(f'Drafter {name!r} is registered twice.')
    _DRAFTERS[name] = factory
    return factory
  return wrap


def drafter_names() -> list[str]:
  return sorted(_DRAFTERS)


@registry.register
@dataclasses.dataclass(frozen=True)
class SpeculativeDecoder(base.Decoder):
  """Speculative decoding: a drafter proposes a token tree, the target verifies it in one
  forward (lossless)."""
  name: ClassVar[str] = 'speculative'
  family: ClassVar[str] = 'speculative'
  lossless: ClassVar[bool] = True
  drafter: str = 'model'       # see drafter_names(): model, prompt_lookup, token_recycling, ...
  draft_workdir: str = ''      # drafter=model: the draft model's workdir
  tree: str = 'chain'          # chain | static | dynamic (drafters that support them)
  gamma: int = 4               # chain length / deepest tree level
  top_k: int = 4               # dynamic trees: frontier width and children per node
  tree_nodes: int = 24         # static (best-first) and dynamic trees: drafted nodes
  branching: str = ''          # static tree as children per depth, e.g. '4,2,2,1'
  verifier: str = 'auto'       # auto | deterministic | iid | wor | kseq
  stop_below: float = 0.0      # adaptive chains: stop drafting below this top-1 probability
  exit_layer: int = 0          # early exit: draft with layers [0, exit_layer) (0 = half)
  ngram: int = 3               # prompt lookup / lookahead: longest n-gram matched
  recycle_k: int = 8           # token recycling: successors kept per token
  window: int = 5              # jacobi / lookahead: guess window
  pool: int = 4                # lookahead: n-gram candidates verified per step

  def __post_init__(self):
    if self.drafter not in _DRAFTERS:
      raise ValueError(f'Unknown drafter {self.drafter!r}; known drafters: {drafter_names()}.')
    if self.tree not in TREES:
      raise ValueError(f'Unknown tree {self.tree!r}; choose one of {TREES}.')
    if self.verifier not in VERIFIERS:
      raise ValueError(f'Unknown verifier {self.verifier!r}; choose one of {VERIFIERS}.')
    for name in ('gamma', 'top_k', 'tree_nodes', 'ngram', 'recycle_k', 'window', 'pool'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}.')
    if not 0.0 <= self.stop_below < 1.0:
      raise ValueError(f'stop_below must be in [0, 1), got {self.stop_below}.')
    made = self.make_drafter()  # fail early on bad combinations
    if not made.has_q and self.verifier in ('iid', 'wor', 'kseq'):
      raise ValueError(f'The {self.drafter!r} drafter proposes tokens without a distribution q;'
                       f" verifier={self.verifier!r} needs one. Use 'auto' or 'deterministic'.")

  def make_drafter(self) -> drafter_lib.Drafter:
    return _DRAFTERS[self.drafter](self)

  def verification_mode(self) -> str:
    """The rule actually used (greedy sampling always verifies deterministically)."""
    if self.sampling.greedy:
      return 'deterministic'
    if self.verifier != 'auto':
      return self.verifier
    made = self.make_drafter()
    if not made.has_q:
      return 'deterministic'
    return {'chain': 'iid', 'static': 'wor', 'dynamic': 'deterministic'}[self.tree]

  def extra_models(self) -> dict[str, str]:
    return self.make_drafter().extra_models()

  def extra_cache_slots(self, max_new_tokens: int) -> int:
    del max_new_tokens
    return self.make_drafter().extra_cache_slots()

  def generate(self, models: base.Models, params: dict[str, Any], prompt_BxP: jax.Array,
               prompt_len_B: jax.Array, row_keys_B: jax.Array, *, max_new_tokens: int,
               cache_size: int, eos_id: int, pad_id: int) -> base.DecodeResult:
    mode = self.verification_mode()
    drafter = self._drafter_for(mode).resolve(models)
    drafter.check(models, params)
    need = max_new_tokens + drafter.extra_cache_slots() + 1
    if need > cache_size:
      raise ValueError(f'The draft tree of {self.drafter!r} needs {drafter.extra_cache_slots()}'
                       f' cache slots of room beyond the {max_new_tokens} new tokens, but the '
                       f'cache has {cache_size} slots in all. Raise the cache size or use a '
                       'smaller tree.')
    env = drafter_lib.Env(models=models, params=params, sampling=self.sampling, mode=mode,
                          row_keys_B=row_keys_B, prompt_BxP=prompt_BxP,
                          prompt_len_B=prompt_len_B, cache_size=cache_size,
                          max_new_tokens=max_new_tokens)
    return loop.generate(drafter, env, eos_id=eos_id, pad_id=pad_id)

  def _drafter_for(self, mode: str) -> drafter_lib.Drafter:
    made = self.make_drafter()
    if hasattr(made, 'mode'):
      made = dataclasses.replace(made, mode=mode)
    return made

  def template(self, profile=DRAFT_PROFILE) -> trees.Template:
    """The static tree of these settings (chain: gamma drafts)."""
    if self.tree == 'chain':
      return trees.chain(self.gamma)
    return trees.parse(self.branching, nodes=self.tree_nodes, depth=self.gamma,
                       profile=profile)


@register_drafter('model')
def _model_drafter(d: SpeculativeDecoder) -> drafter_lib.Drafter:
  if d.tree == 'dynamic':
    return draft_model.DraftModelDrafter(workdir=d.draft_workdir, shape='dynamic',
                                         top_k=d.top_k, depth=d.gamma, nodes=d.tree_nodes,
                                         stop_below=d.stop_below)
  return draft_model.DraftModelDrafter(workdir=d.draft_workdir, shape=d.tree,
                                       template=d.template(), stop_below=d.stop_below)


def _alias(name: str, drafter: str, doc: str, **defaults) -> type:
  """A registered subclass of SpeculativeDecoder with another default drafter/settings."""
  fields = [('drafter', str, dataclasses.field(default=drafter))]
  for key, value in defaults.items():
    fields.append((key, type(value), dataclasses.field(default=value)))
  cls = dataclasses.make_dataclass(
      ''.join(p.capitalize() for p in name.split('_')) + 'Decoder', fields,
      bases=(SpeculativeDecoder,), frozen=True, namespace={'name': name, '__doc__': doc})
  cls.__module__ = __name__
  return registry.register(cls)


SpecDynamicDecoder = _alias(
    'spec_dynamic', 'model', 'Draft-model speculative decoding over a dynamic (EAGLE-2 style) '
    'token tree (lossless).', tree='dynamic', gamma=6, top_k=6, tree_nodes=48)
SpecRSDDecoder = _alias(
    'spec_rsd', 'model', 'Recursive Speculative Decoding (RSD-S): a draft model\'s stochastic '
    'beam search tree, verified without replacement (lossless; greedy: EAGLE-2 tree).',
    tree='dynamic', verifier='wor', gamma=4, top_k=4, tree_nodes=16)


@register_drafter('prompt_lookup')
def _prompt_lookup(d: SpeculativeDecoder) -> drafter_lib.Drafter:
  return ngram.PromptLookupDrafter(gamma=d.gamma, ngram=d.ngram)


@register_drafter('token_recycling')
def _token_recycling(d: SpeculativeDecoder) -> drafter_lib.Drafter:
  profile = trees.RECYCLING_PROFILE[:d.recycle_k]
  return ngram.TokenRecyclingDrafter(template=d.template(profile), k=d.recycle_k)


@register_drafter('jacobi')
def _jacobi(d: SpeculativeDecoder) -> drafter_lib.Drafter:
  return jacobi.JacobiDrafter(window=d.window)


@register_drafter('lookahead')
def _lookahead(d: SpeculativeDecoder) -> drafter_lib.Drafter:
  return jacobi.LookaheadDrafter(window=d.window, ngram=d.ngram, pool=d.pool)


PromptLookupDecoder = _alias(
    'prompt_lookup', 'prompt_lookup', 'Prompt lookup: copy what followed the latest match of '
    'the trailing n-gram (training-free, lossless).', gamma=6)
TokenRecyclingDecoder = _alias(
    'token_recycling', 'token_recycling', 'Token Recycling: a table of each token\'s latest '
    'top-k successors expanded into an 80-node tree (training-free, lossless).',
    tree='static', gamma=6, tree_nodes=80)
JacobiDecoder = _alias(
    'jacobi', 'jacobi', 'Jacobi decoding: fixed-point iteration over a window of guesses '
    '(training-free, lossless).')
LookaheadDecoder = _alias(
    'lookahead', 'lookahead', 'Lookahead decoding: a Jacobi window plus an n-gram pool '
    'verified as one trie (training-free, lossless).')


# Medusa trees: rank-acceptance of head proposals (top-1 dominates).
HEADS_PROFILE = (0.6, 0.15, 0.07, 0.04, 0.03, 0.02)


@register_drafter('medusa')
def _medusa(d: SpeculativeDecoder) -> drafter_lib.Drafter:
  return head_drafters.MedusaDrafter(template=d.template(HEADS_PROFILE))


@register_drafter('mtp')
def _mtp(d: SpeculativeDecoder) -> drafter_lib.Drafter:
  return head_drafters.MTPDrafter(template=d.template(HEADS_PROFILE))


def _exit_drafter(d: SpeculativeDecoder, adapter: bool, dynamic: bool) -> drafter_lib.Drafter:
  if d.tree != 'chain':
    raise ValueError(f'The {d.drafter!r} drafter drafts chains only (tree=chain).')
  exits = () if dynamic else (d.exit_layer,)
  return early_exit.EarlyExitDrafter(exits=exits, gamma=d.gamma, stop_below=d.stop_below,
                                     adapter=adapter)


@register_drafter('layerskip')
def _layerskip(d: SpeculativeDecoder) -> drafter_lib.Drafter:
  return _exit_drafter(d, adapter=False, dynamic=False)


@register_drafter('kangaroo')
def _kangaroo(d: SpeculativeDecoder) -> drafter_lib.Drafter:
  return _exit_drafter(d, adapter=True, dynamic=False)


@register_drafter('del')
def _del(d: SpeculativeDecoder) -> drafter_lib.Drafter:
  return _exit_drafter(d, adapter=False, dynamic=True)


MedusaDecoder = _alias(
    'medusa', 'medusa', 'Medusa heads on the target\'s last hidden state over a static tree '
    '(needs a run trained with configs/spec_heads.py:medusa; lossless).', tree='static',
    gamma=3, tree_nodes=24)
MTPDecoder = _alias(
    'mtp', 'mtp', 'DeepSeek-style sequential MTP modules as drafter (needs a run trained with '
    'configs/spec_heads.py:mtp; lossless).', gamma=2)
LayerSkipDecoder = _alias(
    'layerskip', 'layerskip', 'Self-speculation by early exit through the shared head, '
    'reusing the shallow layers\' cache (lossless).', gamma=4)
KangarooDecoder = _alias(
    'kangaroo', 'kangaroo', 'Kangaroo: early exit plus a trained adapter, stop at low '
    'confidence (needs configs/spec_heads.py:kangaroo; lossless).', gamma=6, stop_below=0.6)
DELDecoder = _alias(
    'del', 'del', 'DEL: early exit with the exit layer and draft length picked online from '
    'shadow-token acceptance (lossless).', gamma=4)
