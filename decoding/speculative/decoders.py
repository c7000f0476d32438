"""The registered speculative decoders: one class per name, composed of three choices.

  drafter    what proposes tokens: a class per drafter family, whose dataclass fields are
             that family's settings and whose `make_drafter` builds its `drafter.Drafter`
  verifier   `verifier` (every decoder): auto | deterministic | iid | wor | kseq | traversal
  tree       the tree policy of drafters that fill a tree (`TreeDecoder`): tree, gamma,
             tree_nodes, branching, delay (+ top_k for dynamic draft-model trees)

  class                  name(s)                       drafter (drafter module)
  SpeculativeDecoder     speculative                   any, by `drafter=NAME` (default model)
  SpecDynamicDecoder     spec_dynamic                  draft model, EAGLE-2 tree (draft_model)
  SpecRSDDecoder         spec_rsd                      draft model, RSD-S beams (draft_model)
  PromptLookupDecoder    prompt_lookup                 n-gram match (ngram)
  TokenRecyclingDecoder  token_recycling               successor table (ngram)
  JacobiDecoder          jacobi                        Jacobi window (jacobi)
  LookaheadDecoder       lookahead                     Jacobi window + n-gram pool (jacobi)
  JacobiForcingDecoder   jacobi_forcing                Jacobi blocks + rejected tails (jacobi)
  MedusaDecoder, MTPDecoder          medusa, mtp       heads (head_drafters)
  LayerSkipDecoder, KangarooDecoder, DELDecoder        early exit (early_exit)
  Eagle3Decoder, Eagle1Decoder       eagle3, eagle1    EAGLE draft layer on target features (eagle)
  ChimeraDecoder                     chimera           trigram + full-context draft heads (chimera)
  S2DDecoder                         s2d               a sub-model of a nested draft (s2d)

The drafter is built once, when the decoder is (`__post_init__`), with the verification rule
it will run under; `get_drafter()` returns it. Every one of them is lossless: greedy output
equals AR token for token (fp32) and sampled output follows the target distribution exactly
(tested).

  sample.py --decoder=speculative --decoder_config.draft_workdir=runs/draft \
      --decoder_config.tree=dynamic
  sample.py --decoder=ar,prompt_lookup:gamma=4,token_recycling
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax

import registry as registry_lib
from decoding import base
from decoding import registry
from decoding.speculative import adaptive as adaptive_lib
from decoding.speculative import chimera
from decoding.speculative import draft_model
from decoding.speculative import drafter as drafter_lib
from decoding.speculative import eagle
from decoding.speculative import early_exit
from decoding.speculative import head_drafters
from decoding.speculative import jacobi
from decoding.speculative import loop
from decoding.speculative import s2d
from decoding.speculative import ngram
from decoding.speculative import settings as settings_lib
from decoding.speculative import trees
from models import eagle as eagle_lib

TREES = settings_lib.TREES
VERIFIERS = settings_lib.VERIFIERS
# Rank-acceptance profile for best-first static trees of a draft model (Sequoia-style).
DRAFT_PROFILE = (0.75, 0.12, 0.05, 0.03, 0.02, 0.015, 0.01, 0.01)
# Medusa trees: rank-acceptance of head proposals (top-1 dominates).
HEADS_PROFILE = (0.6, 0.15, 0.07, 0.04, 0.03, 0.02)

# Drafter family name -> its decoder class (`speculative:drafter=NAME`).
DRAFTERS: registry_lib.Registry[type['SpecDecoder']] = registry_lib.Registry('drafter')


def drafter_names() -> list[str]:
  return DRAFTERS.names()


@dataclasses.dataclass(frozen=True)
class SpecDecoder(base.Decoder):
  """Base of the speculative decoders: the subclass's fields are its drafter's settings;
  `make_drafter(mode)` builds the drafter, once, in `__post_init__`."""
  family: ClassVar[str] = 'speculative'
  lossless: ClassVar[bool] = True
  drafter_type: ClassVar[type[drafter_lib.Drafter]] = drafter_lib.Drafter
  verifier: str = 'auto'
  adaptive: bool = False       # chains: pick the chain length 0..gamma per step by recent
                               # acceptance and measured forward costs (adaptive.py)
  costs: str = ''              # adaptive: relative forward costs per chain length, e.g.
                               # '1,1.2,1.5,2.4' ('/' in a --decoder spec); '' = measured
                               # when the decoder is compiled
  typical_epsilon: float = 0.09  # verifier=typical (Medusa's typical acceptance, lossy):
  typical_alpha: float = 0.3     # a draft x after u passes iff p_u(x) > min(eps, alpha e^-H)

  def __post_init__(self):
    composed = self.composed()
    settings_lib.check(self, composed)
    object.__setattr__(self, '_drafter', adaptive_lib.wrap(
        composed.make_drafter(self.verification_mode()), self.adaptive, self.costs))

  # ---------------------------------------------------------------- the three choices
  def composed(self) -> 'SpecDecoder':
    """The decoder whose drafter settings are used (itself but for `speculative:drafter=`)."""
    return self

  def drafter_name(self) -> str:
    return self.name

  def make_drafter(self, mode: str) -> drafter_lib.Drafter:
    """The drafter of these settings, for verification rule `mode`."""
    raise NotImplementedError

  def get_drafter(self) -> drafter_lib.Drafter:
    """The drafter, built once with the decoder (settings that depend on the model are
    filled by `Drafter.resolve(models)` at generation)."""
    return self._drafter  # pytype: disable=attribute-error

  def verification_mode(self) -> str:
    """The rule actually used (greedy sampling always verifies deterministically; so do
    drafts under typical acceptance, whose thresholds `typical_thresholds` gives)."""
    if self.sampling.greedy or self.verifier == 'typical':
      return 'deterministic'
    if self.verifier != 'auto':
      return self.verifier
    composed = self.composed()
    if not composed.drafter_type.has_q:
      return 'deterministic'
    return {'chain': 'iid', 'static': 'wor', 'dynamic': 'deterministic'}[composed.tree]

  def typical_thresholds(self) -> tuple[float, float] | None:
    """(epsilon, alpha) when sampling with verifier='typical', else None."""
    if self.verifier != 'typical' or self.sampling.greedy:
      return None
    return (self.typical_epsilon, self.typical_alpha)

  def is_lossless(self) -> bool:
    """Typical acceptance is lossy (at temperature 0 it is greedy verification, exact)."""
    return type(self).lossless and self.verifier != 'typical'

  # ---------------------------------------------------------------- Decoder interface
  def prepare(self, models, params, *, batch, cache_size):
    """Adaptive draft length without given costs: measures them on this machine."""
    if not adaptive_lib.costs_to_measure(self._drafter, self.costs):
      return self
    costs = adaptive_lib.calibrate(models.target, params['target'], self._drafter.gammas,
                                   batch=batch, cache_size=cache_size)
    return dataclasses.replace(self, costs=','.join(f'{c:g}' for c in costs))

  def extra_models(self) -> dict[str, str]:
    return self.get_drafter().extra_models()

  def draft_vocab_sizes(self) -> tuple[int, ...]:
    return self.get_drafter().draft_vocab_sizes()

  def extra_cache_slots(self, max_new_tokens: int) -> int:
    del max_new_tokens
    return self.get_drafter().extra_cache_slots()

  def generate(self, models: base.Models, params: dict[str, Any], prompt_BxP: jax.Array,
               prompt_len_B: jax.Array, row_keys_B: jax.Array, *, max_new_tokens: int,
               cache_size: int, eos_id: int, pad_id: int) -> base.DecodeResult:
    drafter = self.get_drafter().resolve(models)
    params = drafter.with_draft_vocab(params)
    drafter.check(models, params)
    need = max_new_tokens + drafter.extra_cache_slots() + 1
    if need > cache_size:
      raise ValueError(f'The draft tree of {self.composed().drafter_name()!r} needs '
                       f'{drafter.extra_cache_slots()} cache slots of room beyond the '
                       f'{max_new_tokens} new tokens, but the cache has {cache_size} slots in '
                       'all. Raise the cache size or use a smaller tree.')
    env = drafter_lib.Env(models=models, params=params, sampling=self.sampling,
                          mode=self.verification_mode(), row_keys_B=row_keys_B,
                          prompt_BxP=prompt_BxP, prompt_len_B=prompt_len_B,
                          cache_size=cache_size, max_new_tokens=max_new_tokens,
                          typical=self.typical_thresholds())
    return loop.generate(drafter, env, eos_id=eos_id, pad_id=pad_id)


@dataclasses.dataclass(frozen=True)
class TreeDecoder(SpecDecoder):
  """A decoder whose drafter fills a tree: the tree policy (shape, depth, size, branching)."""
  profile: ClassVar[tuple[float, ...]] = DRAFT_PROFILE
  tree: str = 'chain'          # chain | static | dynamic (draft models)
  gamma: int = 4               # chain length / deepest tree level
  tree_nodes: int = 24         # static (best-first) and dynamic trees: drafted nodes
  branching: str = ''          # static tree as children per depth, e.g. '4,2,2,1'
  delay: int = 0               # static: one path of `delay` drafts, then i.i.d. rollouts (DDTE)

  def template(self, profile: tuple[float, ...] | None = None) -> trees.Template:
    """The static tree of these settings (chain: gamma drafts)."""
    if self.tree == 'chain':
      return trees.chain(self.gamma)
    return trees.parse(self.branching, nodes=self.tree_nodes, depth=self.gamma,
                       profile=profile or self.profile, delay=self.delay)


# ------------------------------------------------------------------------ draft model
@dataclasses.dataclass(frozen=True)
class DraftModelDecoder(TreeDecoder):
  """A separate draft model (same tokenizer) over a chain, static or dynamic tree."""
  drafter_type: ClassVar[type[drafter_lib.Drafter]] = draft_model.DraftModelDrafter
  draft_workdir: str = ''      # the draft model's workdir
  top_k: int = 4               # dynamic trees: frontier width and children per node
  stop_below: float = 0.0      # adaptive chains: stop drafting below this top-1 probability
  draft_loop: str = 'auto'     # chains: auto | while | fixed | unroll (drafter.draft_loop)
  draft_vocab: int = 0         # the draft scores the N most frequent training tokens (FR-Spec;
                               # 0 = its whole vocabulary)

  def drafter_name(self) -> str:
    return 'model'

  def make_drafter(self, mode):
    if self.tree == 'dynamic':
      return draft_model.DraftModelDrafter(workdir=self.draft_workdir, shape='dynamic',
                                           top_k=self.top_k, depth=self.gamma,
                                           nodes=self.tree_nodes, stop_below=self.stop_below,
                                           mode=mode, draft_vocab=self.draft_vocab)
    return draft_model.DraftModelDrafter(workdir=self.draft_workdir, shape=self.tree,
                                         template=self.template(), stop_below=self.stop_below,
                                         mode=mode, loop=self.draft_loop,
                                         draft_vocab=self.draft_vocab)


@registry.register
@dataclasses.dataclass(frozen=True)
class SpeculativeDecoder(DraftModelDecoder):
  """Speculative decoding: a drafter proposes a token tree, the target verifies it in one
  forward (lossless)."""
  name: ClassVar[str] = 'speculative'
  drafter: str = 'model'       # a drafter family (drafter_names()); its other settings are
                               # that family's defaults (set them with --decoder=FAMILY)

  def __post_init__(self):
    family = DRAFTERS.get(self.drafter)
    routed = self
    if family is not DraftModelDecoder:
      own = {f.name: f for f in dataclasses.fields(family)}
      settings = {}
      for f in dataclasses.fields(self):
        if f.name in own:
          settings[f.name] = getattr(self, f.name)
        elif f.name != 'drafter' and getattr(self, f.name) != f.default:
          raise ValueError(f'The {self.drafter!r} drafter has no setting {f.name!r} (its '
                           f'settings: {sorted(set(own) - {"sampling"})}).')
      routed = family(**settings)
    object.__setattr__(self, '_routed', routed)
    object.__setattr__(self, 'model_heads', routed.model_heads)  # drafter=medusa needs heads
    super().__post_init__()

  def composed(self) -> SpecDecoder:
    return self._routed  # pytype: disable=attribute-error


@registry.register
@dataclasses.dataclass(frozen=True)
class SpecDynamicDecoder(DraftModelDecoder):
  """Draft-model speculative decoding over a dynamic (EAGLE-2 style) token tree
  (lossless)."""
  name: ClassVar[str] = 'spec_dynamic'
  tree: str = 'dynamic'
  gamma: int = 6
  top_k: int = 6
  tree_nodes: int = 48


@registry.register
@dataclasses.dataclass(frozen=True)
class SpecRSDDecoder(DraftModelDecoder):
  """Recursive Speculative Decoding (RSD-S): a draft model's stochastic beam search tree,
  verified without replacement (lossless; greedy: EAGLE-2 tree)."""
  name: ClassVar[str] = 'spec_rsd'
  tree: str = 'dynamic'
  verifier: str = 'wor'
  gamma: int = 4
  top_k: int = 4
  tree_nodes: int = 16


# ------------------------------------------------------------------------ training-free
@registry.register
@dataclasses.dataclass(frozen=True)
class PromptLookupDecoder(SpecDecoder):
  """Prompt lookup: copy what followed the latest match of the trailing n-gram
  (training-free, lossless)."""
  name: ClassVar[str] = 'prompt_lookup'
  drafter_type: ClassVar[type[drafter_lib.Drafter]] = ngram.PromptLookupDrafter
  gamma: int = 6               # drafted tokens (a chain)
  ngram: int = 3               # longest n-gram matched

  def make_drafter(self, mode):
    return ngram.PromptLookupDrafter(gamma=self.gamma, ngram=self.ngram)


@registry.register
@dataclasses.dataclass(frozen=True)
class TokenRecyclingDecoder(TreeDecoder):
  """Token Recycling: a table of each token's latest top-k successors expanded into an
  80-node tree (training-free, lossless)."""
  name: ClassVar[str] = 'token_recycling'
  drafter_type: ClassVar[type[drafter_lib.Drafter]] = ngram.TokenRecyclingDrafter
  tree: str = 'static'
  gamma: int = 6
  tree_nodes: int = 80
  recycle_k: int = 8           # successors kept per token

  def make_drafter(self, mode):
    profile = trees.RECYCLING_PROFILE[:self.recycle_k]
    return ngram.TokenRecyclingDrafter(template=self.template(profile), k=self.recycle_k)


@registry.register
@dataclasses.dataclass(frozen=True)
class JacobiDecoder(SpecDecoder):
  """Jacobi decoding: fixed-point iteration over a window of guesses (training-free,
  lossless)."""
  name: ClassVar[str] = 'jacobi'
  drafter_type: ClassVar[type[drafter_lib.Drafter]] = jacobi.JacobiDrafter
  window: int = 5              # guess window

  def make_drafter(self, mode):
    return jacobi.JacobiDrafter(window=self.window)


@registry.register
@dataclasses.dataclass(frozen=True)
class LookaheadDecoder(SpecDecoder):
  """Lookahead decoding: an n-gram pool fed by a lookahead branch of Jacobi diagonals, the
  pool's n-grams and a Jacobi window verified as one trie (training-free, lossless)."""
  name: ClassVar[str] = 'lookahead'
  drafter_type: ClassVar[type[drafter_lib.Drafter]] = jacobi.LookaheadDrafter
  window: int = 5              # guess window
  ngram: int = 3               # n-gram length in the pool (N)
  pool: int = 4                # n-gram candidates verified per step
  lookahead: int = 5           # lookahead branch: chains of ngram - 1 guesses (W; 0 = none)

  def make_drafter(self, mode):
    return jacobi.LookaheadDrafter(window=self.window, ngram=self.ngram, pool=self.pool,
                                   lookahead=self.lookahead)


@registry.register
@dataclasses.dataclass(frozen=True)
class JacobiForcingDecoder(SpecDecoder):
  """Jacobi Forcing's decoder: a window of `blocks` Jacobi blocks of `block` guesses plus
  rejection recycling (for runs trained with configs/jacobi_forcing.py; lossless on any)."""
  name: ClassVar[str] = 'jacobi_forcing'
  drafter_type: ClassVar[type[drafter_lib.Drafter]] = jacobi.JacobiForcingDrafter
  block: int = 16              # guesses per Jacobi block (n)
  blocks: int = 2              # blocks iterated at once (K); the window is K * n
  recycle: int = 2             # rejected tails verified per step (0 = plain Jacobi window)

  def make_drafter(self, mode):
    window = self.block * self.blocks
    if self.recycle == 0:
      return jacobi.JacobiDrafter(window=window)
    return jacobi.JacobiForcingDrafter(window=window, ngram=window + 1, pool=self.recycle)


# ------------------------------------------------------------------------ heads
@dataclasses.dataclass(frozen=True)
class HeadsDecoder(TreeDecoder):
  """Draft heads trained on the target's hidden states (a static tree or a chain)."""
  profile: ClassVar[tuple[float, ...]] = HEADS_PROFILE


@registry.register
@dataclasses.dataclass(frozen=True)
class MedusaDecoder(HeadsDecoder):
  """Medusa heads on the target's last hidden state over a static tree (needs a run trained
  with configs/spec_heads.py:medusa; lossless)."""
  name: ClassVar[str] = 'medusa'
  model_heads: ClassVar[tuple[str, ...]] = ('medusa',)
  drafter_type: ClassVar[type[drafter_lib.Drafter]] = head_drafters.MedusaDrafter
  tree: str = 'static'
  gamma: int = 3
  tree_nodes: int = 24
  draft_vocab: int = 0         # heads trained over the whole vocabulary: draft over the N most
                               # frequent training tokens (FR-Spec; 0 = as trained)

  def make_drafter(self, mode):
    return head_drafters.MedusaDrafter(template=self.template(), draft_vocab=self.draft_vocab)


@registry.register
@dataclasses.dataclass(frozen=True)
class MTPDecoder(HeadsDecoder):
  """DeepSeek-style sequential MTP modules as drafter (needs a run trained with
  configs/spec_heads.py:mtp; lossless)."""
  name: ClassVar[str] = 'mtp'
  model_heads: ClassVar[tuple[str, ...]] = ('mtp',)
  drafter_type: ClassVar[type[drafter_lib.Drafter]] = head_drafters.MTPDrafter
  gamma: int = 2
  draft_vocab: int = 0         # modules trained over the whole vocabulary: draft over the N
                               # most frequent training tokens (FR-Spec; 0 = as trained)

  def make_drafter(self, mode):
    return head_drafters.MTPDrafter(template=self.template(), draft_vocab=self.draft_vocab)


# ------------------------------------------------------------------------ early exit
@dataclasses.dataclass(frozen=True)
class EarlyExitDecoder(SpecDecoder):
  """Self-speculation through the target's own first layers (chains)."""
  drafter_type: ClassVar[type[drafter_lib.Drafter]] = early_exit.EarlyExitDrafter
  adapter: ClassVar[bool] = False  # Kangaroo's trained adapter after the exit layer
  gamma: int = 4               # longest chain
  stop_below: float = 0.0      # stop drafting below this top-1 probability
  draft_loop: str = 'auto'     # auto | while | fixed | unroll (drafter.draft_loop)
  draft_vocab: int = 0         # draft over the N most frequent training tokens (FR-Spec;
                               # 0 = the whole vocabulary)

  def exits(self) -> tuple[int, ...]:
    """(E,) one exit layer (0 = half the layers); () = chosen online among all (DEL)."""
    return (self.exit_layer,)

  def make_drafter(self, mode):
    return early_exit.EarlyExitDrafter(exits=self.exits(), gamma=self.gamma,
                                       stop_below=self.stop_below, adapter=self.adapter,
                                       loop=self.draft_loop, draft_vocab=self.draft_vocab)


@registry.register
@dataclasses.dataclass(frozen=True)
class LayerSkipDecoder(EarlyExitDecoder):
  """Self-speculation by early exit through the shared head, reusing the shallow layers'
  cache (lossless)."""
  name: ClassVar[str] = 'layerskip'
  exit_layer: int = 0          # draft with layers [0, exit_layer) (0 = half)


@registry.register
@dataclasses.dataclass(frozen=True)
class KangarooDecoder(EarlyExitDecoder):
  """Kangaroo: early exit plus a trained adapter, stop at low confidence (needs
  configs/spec_heads.py:kangaroo; lossless)."""
  name: ClassVar[str] = 'kangaroo'
  model_heads: ClassVar[tuple[str, ...]] = ('kangaroo',)
  adapter: ClassVar[bool] = True
  gamma: int = 6
  stop_below: float = 0.6
  exit_layer: int = 0          # draft with layers [0, exit_layer) (0 = half)


@registry.register
@dataclasses.dataclass(frozen=True)
class DELDecoder(EarlyExitDecoder):
  """DEL: early exit with the exit layer and draft length picked online from shadow-token
  acceptance (lossless)."""
  name: ClassVar[str] = 'del'

  def __post_init__(self):
    if self.adaptive:
      raise ValueError('DEL picks its own exit layer and draft length every step; the '
                       'adaptive draft length (adaptive=1) does not apply to it.')
    super().__post_init__()

  def exits(self) -> tuple[int, ...]:
    return ()


# ------------------------------------------------------------------------ EAGLE
@dataclasses.dataclass(frozen=True)
class EagleDecoder(SpecDecoder):
  """An EAGLE draft layer on the target's features, over a chain or an EAGLE-2 dynamic
  tree."""
  drafter_type: ClassVar[type[drafter_lib.Drafter]] = eagle.EagleDrafter
  variant: ClassVar[str] = ''
  tree: str = 'dynamic'        # chain | dynamic (EAGLE-2)
  gamma: int = 5               # chain length / tree depth
  top_k: int = 4               # dynamic: frontier width and children per node
  tree_nodes: int = 24         # dynamic: drafted nodes
  feature_layers: str = ''     # EAGLE-3: fused target layers, e.g. '1/2/4' ('' = the default
                               # of models.eagle.feature_layers, as training uses)
  draft_loop: str = 'auto'     # chains: auto | while | fixed | unroll (drafter.draft_loop)
  draft_vocab: int = 0         # a layer trained over the whole vocabulary: draft over the N
                               # most frequent training tokens (FR-Spec; 0 = as trained)

  def make_drafter(self, mode):
    del mode  # deterministic drafts: every rule verifies them as 'deterministic'
    if self.adaptive:
      raise ValueError(f'The {self.name!r} decoder has no adaptive draft length yet (its '
                       'pending pairs are sized by gamma); use adaptive=0.')
    if self.tree not in ('chain', 'dynamic'):
      raise ValueError(f"The {self.name!r} decoder drafts tree='chain' or 'dynamic' "
                       f'(EAGLE-2), got {self.tree!r}.')
    return eagle.EagleDrafter(variant=self.variant, shape=self.tree, gamma=self.gamma,
                              top_k=self.top_k, nodes=self.tree_nodes,
                              layers=eagle_lib.parse_layers(self.feature_layers),
                              loop=self.draft_loop, draft_vocab=self.draft_vocab)


@registry.register
@dataclasses.dataclass(frozen=True)
class Eagle3Decoder(EagleDecoder):
  """EAGLE-3: one draft layer on fused low/mid/high target features, trained with
  training-time test (needs configs/spec_heads.py:eagle3; lossless)."""
  name: ClassVar[str] = 'eagle3'
  model_heads: ClassVar[tuple[str, ...]] = ('eagle3',)
  variant: ClassVar[str] = 'eagle3'


@registry.register
@dataclasses.dataclass(frozen=True)
class Eagle1Decoder(EagleDecoder):
  """EAGLE-1: one draft layer on the target's top feature, trained with feature regression
  (needs configs/spec_heads.py:eagle1; lossless)."""
  name: ClassVar[str] = 'eagle1'
  model_heads: ClassVar[tuple[str, ...]] = ('eagle1',)
  variant: ClassVar[str] = 'eagle1'


for _name, _cls in (('model', DraftModelDecoder), ('prompt_lookup', PromptLookupDecoder),
                    ('token_recycling', TokenRecyclingDecoder), ('jacobi', JacobiDecoder),
                    ('lookahead', LookaheadDecoder), ('jacobi_forcing', JacobiForcingDecoder),
                    ('medusa', MedusaDecoder),
                    ('mtp', MTPDecoder), ('layerskip', LayerSkipDecoder),
                    ('kangaroo', KangarooDecoder), ('del', DELDecoder),
                    ('eagle3', Eagle3Decoder), ('eagle1', Eagle1Decoder)):
  DRAFTERS.add(_name, _cls)


# ------------------------------------------------------------------------ Chimera
@registry.register
@dataclasses.dataclass(frozen=True)
class ChimeraDecoder(HeadsDecoder):
  """Chimera: a trigram encoder and one full-context layer on the target's hidden states feed
  residual heads that propose a chain or a static tree (needs configs/spec_heads.py:chimera;
  lossless)."""
  name: ClassVar[str] = 'chimera'
  model_heads: ClassVar[tuple[str, ...]] = ('chimera',)
  drafter_type: ClassVar[type[drafter_lib.Drafter]] = chimera.ChimeraDrafter
  tree: str = 'static'
  gamma: int = 4
  tree_nodes: int = 24

  def make_drafter(self, mode):
    del mode  # deterministic drafts: every rule verifies them as 'deterministic'
    if self.adaptive:
      raise ValueError("The 'chimera' decoder has no adaptive draft length yet; use "
                       'adaptive=0.')
    return chimera.ChimeraDrafter(template=self.template())


DRAFTERS.add('chimera', ChimeraDecoder)


# ------------------------------------------------------------------------ S2D
@registry.register
@dataclasses.dataclass(frozen=True)
class S2DDecoder(DraftModelDecoder):
  """S2D: one sorted, nested draft serves several targets; each uses the sub-model (exit
  layer) picked for it by measured acceptance (`s2d.calibrate`; needs a draft trained with
  configs/s2d.py; lossless)."""
  name: ClassVar[str] = 's2d'
  drafter_type: ClassVar[type[drafter_lib.Drafter]] = s2d.S2DDrafter
  exit_layer: int = 0          # the sub-model: the draft's first exit_layer layers (0 = all)

  def drafter_name(self) -> str:
    return 's2d'

  def make_drafter(self, mode):
    d = super().make_drafter(mode)
    return s2d.S2DDrafter(**{f.name: getattr(d, f.name) for f in dataclasses.fields(d)},
                          exit_layer=self.exit_layer)


DRAFTERS.add('s2d', S2DDecoder)
