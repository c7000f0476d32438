"""EAGLE draft decoders (Li et al. 2024, 2025): one decoder layer that runs beside a frozen
target, on the target's features, with its own KV cache and the target's output head.

  EAGLE-3  feature = concat of the target's residual streams at a low, a middle and a high
           layer (`feature_layers`), fused to d_model by a linear map `fc` (no bias). The
           draft's own output (its residual stream, before its output norm) replaces the
           fused feature on later draft steps; logits = target head(out_norm(g)), or with
           `own_head` (head + trained head_delta)(out_norm(g)). Trained with training-time
           test (the draft consumes its own outputs for several steps).
  EAGLE-1  feature = the target's final-normed hidden state (what its head reads). The draft
           predicts the next feature (regressed with smooth L1) and the logits are the
           target's head applied to the predicted feature directly.

One layer, shared by both variants (x: the feature, e: embedding of the next token):

  u = W_in [norm_e(e); norm_x(x)]         (2D -> D)
  r = x + Attn(u)                         (residual = the feature, as in EAGLE-3)
  g = r + MLP(norm_m(r))                  -> the draft's output feature

EAGLE-3's attention takes q/k/v from the 2D concatenation directly; here a D x 2D map comes
first (a factorisation of the same linear maps, rank-limited to D). The token embedding is the
target's (frozen). The draft's input pair at position p is (feature of position p - 1, token
at p), so the output at p predicts the token at p + 1 — the same position convention as the
target, and the draft cache holds the pair of position p at slot p.

Reduced draft vocabulary (EAGLE-3's d2t/t2d, `models.draft_vocab`): a draft trained with
`hot_ids` (params['hot_ids'], int32 [Vd], the Vd most frequent target tokens of its training
data) reads only those rows of the output head, and its logits are over Vd entries.

Axis letters: B batch, T tokens, S cache slots, D model width, F feature width (3D or D),
V vocabulary (the draft's: Vd with a reduced vocabulary).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import attention as attention_lib
from models import cache as cache_lib
from models import config as config_lib
from models import draft_vocab
from models import heads as heads_lib
from models import layers
from models import masks

EAGLE3, EAGLE1 = 'eagle3', 'eagle1'
VARIANTS = (EAGLE3, EAGLE1)


def parse_layers(spec: str | Sequence[int]) -> tuple[int, ...]:
  """'1,2,4' or '1/2/4' (or a sequence) -> (1, 2, 4); '' -> () (the default)."""
  if isinstance(spec, str):
    return tuple(int(s) for s in spec.replace('/', ',').split(',') if s.strip())
  return tuple(int(i) for i in spec)


def feature_layers(num_layers: int, spec: str | Sequence[int] = '') -> tuple[int, ...]:
  """Indices into `ModelOutput.hidden` (0 = embeddings, i = after layer i) of EAGLE-3's low,
  middle and high features. Default (1, ceil(L / 2), L): on a 4-layer model the paper's choice
  (inputs of layers 2, L/2 and L - 3 of a 32-layer Llama) would leave out every layer above
  the middle, so ours keeps the top residual stream (before the final norm)."""
  out = parse_layers(spec) or (1, max((num_layers + 1) // 2, 1), num_layers)
  for i in out:
    if not 0 <= i <= num_layers:
      raise ValueError(f'EAGLE feature layer {i} must be in [0, {num_layers}] (indices into '
                       'the hidden states: 0 = embeddings, i = after layer i).')
  return out


def target_features(out: Any, variant: str, layer_ids: Sequence[int]) -> jax.Array:
  """[B, T, F] features of a target forward (`out` a ModelOutput; EAGLE-3 needs
  `return_hidden=True`)."""
  if variant == EAGLE1:
    return out.last_hidden_BxTxD
  if out.hidden is None:
    raise ValueError('EAGLE-3 features need the target forward with return_hidden=True.')
  return jnp.concatenate([out.hidden[i] for i in layer_ids], axis=-1)


def feature_width(cfg: config_lib.ModelConfig, variant: str, layer_ids: Sequence[int]) -> int:
  return cfg.d_model * (len(layer_ids) if variant == EAGLE3 else 1)


def draft_config(cfg: config_lib.ModelConfig) -> config_lib.ModelConfig:
  """The one-attention-layer config of the draft's cache."""
  return heads_lib.adapter_config(cfg)


class EagleDraft(nn.Module):
  """The EAGLE draft layer (see module docstring).

  `fuse(feat_BxTxF) -> x_BxTxD` maps target features to the layer's feature space (EAGLE-3:
  `fc`; EAGLE-1: identity). `__call__(x, tokens, positions, in_emb, out_emb, cache=None,
  write_slots_BxT=None, attn_mask=None) -> (g_BxTxD, logits_BxTxV, cache)`. `init_all` touches
  every parameter (for `init`). `own_head`: logits through `out_emb` plus a trained correction
  `head_delta` [V, D] (zero at initialisation), the draft's own head as in EAGLE-3, starting
  from the target's (decoders instead pass `draft_head` as `out_emb` to a layer without it).
  """
  cfg: config_lib.ModelConfig
  variant: str = EAGLE3
  num_features: int = 3  # EAGLE-3: fused layers
  own_head: bool = False  # a trained correction `head_delta` [V, D] to the target's head
  head_rows: int = 0  # rows of `head_delta`: the draft vocabulary (0 = cfg.vocab_size)

  def setup(self):
    cfg = self.cfg
    D = cfg.d_model
    norm = lambda name: layers.RMSNorm(cfg.norm_eps, 'embed', cfg.weight_dtype, name=name)
    if self.variant == EAGLE3:
      self.fc = layers.logical_param(
          self, 'fc', nn.initializers.normal(cfg.init_std / self.num_features ** 0.5),
          (self.num_features * D, D), (None, 'embed'), cfg.weight_dtype)
    self.in_proj = layers.logical_param(self, 'in_proj', nn.initializers.normal(cfg.init_std),
                                        (2 * D, D), (None, 'embed'), cfg.weight_dtype)
    self.e_norm, self.x_norm, self.mlp_norm = norm('e_norm'), norm('x_norm'), norm('mlp_norm')
    if self.variant == EAGLE3:
      self.out_norm = norm('out_norm')
    self.attn = attention_lib.Attention(draft_config(cfg))
    if self.own_head:
      self.head_delta = layers.logical_param(self, 'head_delta', nn.initializers.zeros,
                                             (self.head_rows or cfg.vocab_size, D),
                                             ('vocab', 'embed'),
                                             cfg.weight_dtype)
    self.mlp = layers.MLP(cfg)

  def fuse(self, feat_BxTxF: jax.Array) -> jax.Array:
    if self.variant == EAGLE1:
      return feat_BxTxF
    dt = self.cfg.compute_dtype
    return jnp.einsum('BTF,FD->BTD', feat_BxTxF.astype(dt), self.fc.astype(dt))

  def __call__(self, x_BxTxD, tokens_BxT, positions_BxT, in_emb_VxD, out_emb_VxD,
               cache: cache_lib.Cache | None = None, write_slots_BxT=None,
               attn_mask: masks.MaskSpec = None):
    cfg = self.cfg
    dt = cfg.compute_dtype
    positions_BxT = positions_BxT.astype(jnp.int32)
    slots_BxT, key_pos, key_valid = cache_lib.begin_call(cache, positions_BxT, write_slots_BxT)
    kv = None if cache is None else cache.layer(0)
    # Slot 0 (position 0) never holds a pair, yet lies below the committed length: keys at
    # negative positions are never visible.
    mask = masks.build_mask(positions_BxT, key_pos, key_valid & (key_pos >= 0), attn_mask)
    x = x_BxTxD.astype(dt)
    e = jnp.take(in_emb_VxD, tokens_BxT, axis=0).astype(dt)
    u = jnp.concatenate([self.e_norm(e), self.x_norm(x)], -1)
    u = jnp.einsum('BTE,ED->BTD', u.astype(dt), self.in_proj.astype(dt))
    h, kv = self.attn(u, positions_BxT, mask, kv, slots_BxT)
    r = x + h
    g = r + self.mlp(self.mlp_norm(r))
    head_in = self.out_norm(g) if self.variant == EAGLE3 else g
    if self.own_head:
      out_emb_VxD = out_emb_VxD + self.head_delta
    logits = heads_lib.head_logits(head_in, out_emb_VxD, cfg)
    new_cache = None if cache is None else cache.end_write((kv,), key_pos, slots_BxT)
    return g, logits, new_cache

  def init_all(self, feat_BxTxF, tokens_BxT, in_emb_VxD, out_emb_VxD):
    positions = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
    return self(self.fuse(feat_BxTxF), tokens_BxT, positions, in_emb_VxD, out_emb_VxD)


def init_params(cfg: config_lib.ModelConfig, variant: str, layer_ids: Sequence[int],
                rng: jax.Array, own_head: bool = False, hot_ids: Any = None) -> Any:
  """Fresh draft parameters (plain arrays). `hot_ids`: a reduced draft vocabulary (target
  token ids, `models.draft_vocab`), stored as params['hot_ids'] (int32, never trained);
  None = the whole vocabulary."""
  V = cfg.valid_vocab_size or cfg.vocab_size
  hot = None if hot_ids is None else draft_vocab.check(hot_ids, V)
  p = _init(cfg, variant, len(layer_ids), feature_width(cfg, variant, layer_ids), own_head,
            0 if hot is None else len(hot), rng)
  return draft_vocab.with_ids(p, hot, V)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _init(cfg: config_lib.ModelConfig, variant: str, num_layers: int, F: int, own_head: bool,
          rows: int, rng: jax.Array) -> Any:
  """One jitted program, not one compile per operation of an eager `init`."""
  module = EagleDraft(cfg, variant, num_layers, own_head, rows)
  emb = jnp.zeros((cfg.vocab_size, cfg.d_model))
  head = jnp.zeros((rows or cfg.vocab_size, cfg.d_model))
  return nn.unbox(module.init(rng, jnp.zeros((1, 2, F)), jnp.zeros((1, 2), jnp.int32), emb,
                              head, method=EagleDraft.init_all)['params'])


def num_features(params: Any, cfg: config_lib.ModelConfig) -> int:
  """How many target layers a trained EAGLE-3 draft fuses (from its `fc`)."""
  return params['fc'].shape[0] // cfg.d_model if 'fc' in params else 1


def draft_head(params: Any, out_emb_VxD: jax.Array) -> jax.Array:
  """[Vd, D] the output head a trained draft reads: the target's output embedding (only the rows
  of its reduced vocabulary, when it has one), plus the draft's `head_delta` when it trained
  its own head. Decoders form it once per generation and call the layer (`layer_params`,
  `own_head=False`) with it, not once per draft call."""
  head = draft_vocab.head_rows(params, out_emb_VxD)
  return head + params['head_delta'] if 'head_delta' in params else head


def layer_params(params: Any) -> Any:
  """The draft's layer params: without its head correction (for a layer called with
  `draft_head`) and without its vocabulary ids."""
  return {k: v for k, v in draft_vocab.without(params).items() if k != 'head_delta'}


def module_for(cfg: config_lib.ModelConfig, variant: str, params: Any) -> EagleDraft:
  """The draft layer that trained `params` (fused layers from `fc`, its own head when the
  params carry `head_delta`)."""
  rows = params['head_delta'].shape[0] if 'head_delta' in params else 0
  return EagleDraft(cfg, variant, num_features(params, cfg), 'head_delta' in params, rows)
