"""The decoder-only Transformer and its forward contract (see DESIGN.md, 'The model contract').

  out = model.apply({'params': p}, tokens_BxT, positions_BxT,
                    cache=cache, write_slots_BxT=..., attn_mask=..., inputs_embeds_BxTxD=...,
                    layer_range=(lo, hi), return_hidden=False)
  out.logits_BxTxV, out.cache, out.hidden, out.last_hidden_BxTxD
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from models import attention as attention_lib
from models import cache as cache_lib
from models import config as config_lib
from models import delta_cache
from models import deltaproduct
from models import layers
from models import masks


@flax.struct.dataclass
class ModelOutput:
  """What a forward call returns.

  logits_BxTxV: float32 logits of the head applied after the last layer that ran (ids at or
    past `cfg.valid_vocab_size`, when set, get `layers.NEVER_LOGIT`); None when the call
    passed `return_logits=False`.
  cache: the updated cache (None when none was passed).
  hidden: when `return_hidden`, the residual stream entering the first layer run, then after
    each layer run (hi - lo + 1 arrays [B, T, D], before the final norm); else None.
  last_hidden_BxTxD: the final-normed hidden state the head reads (Coconut's latent thought).
  step_states: when `return_step_states`, a `models.delta_cache.StepStates`: per layer None
    (attention) or the recurrent layer's cache entry after each token of the call (leading
    [B, T + 1]; entry 0 = before the call), plus the lengths before the call. Roll back with
    `out.cache.rewind(keep_B, out.step_states)`. Else None.
  attention_BxTxS: when `return_attention`, the attention probabilities over the keys summed
    over heads and the attention layers run (float32); else None.
  """
  logits_BxTxV: jax.Array | None
  cache: cache_lib.Cache | None
  hidden: tuple[jax.Array, ...] | None
  last_hidden_BxTxD: jax.Array
  step_states: delta_cache.StepStates | None = None
  attention_BxTxS: jax.Array | None = None


class Block(nn.Module):
  """Pre-norm residual block: x + mixer(norm(x)), then + mlp(norm(x)).

  The mixer is attention ('attn', `kind='attention'`) or the recurrent DeltaProduct layer
  ('delta', `kind='deltaproduct'`). Returns (x, layer_cache), plus the per-token cache entries
  (None for attention) when `return_step_states`, plus the attention mass [B, T, S] (None for
  recurrent layers) when `return_attention`.
  """
  cfg: config_lib.ModelConfig
  kind: str = config_lib.ATTENTION
  index_mask: tuple[bool, int] | None = None  # the mask's rule by index (see Attention)

  @nn.compact
  def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, layer_cache, slots_BxT,
               valid_BxT=None, parents_BxT=None, return_step_states=False,
               return_attention=False, lora=None, gate_BxT=None):
    cfg = self.cfg
    norm = lambda name: layers.RMSNorm(cfg.norm_eps, 'embed', cfg.weight_dtype, name=name)
    steps = mass = None
    if self.kind == config_lib.DELTAPRODUCT:
      h_BxTxD, layer_cache, steps = deltaproduct.DeltaProduct(cfg, name='delta')(
          norm('delta_norm')(x_BxTxD), valid_BxT, layer_cache, parents_BxT, return_step_states)
    elif return_attention:
      h_BxTxD, layer_cache, mass = attention_lib.Attention(cfg, self.index_mask,
                                                           name='attn')(
          norm('attn_norm')(x_BxTxD), positions_BxT, mask_BxTxS, layer_cache, slots_BxT, True,
          lora=None if lora is None else lora.get('attn'), gate_BxT=gate_BxT)
    else:
      h_BxTxD, layer_cache = attention_lib.Attention(cfg, self.index_mask, name='attn')(
          norm('attn_norm')(x_BxTxD), positions_BxT, mask_BxTxS, layer_cache, slots_BxT,
          lora=None if lora is None else lora.get('attn'), gate_BxT=gate_BxT)
    x_BxTxD = x_BxTxD + h_BxTxD
    x_BxTxD = x_BxTxD + layers.MLP(cfg, name='mlp')(
        norm('mlp_norm')(x_BxTxD), None if lora is None else lora.get('mlp'), gate_BxT)
    out = (x_BxTxD, layer_cache)
    if return_step_states:
      out += (steps,)
    if return_attention:
      out += (mass,)
    return out


class Transformer(nn.Module):
  """Decoder LM / bidirectional denoiser (same weights, different mask)."""
  cfg: config_lib.ModelConfig

  @nn.compact
  def __call__(self,
               tokens_BxT: jax.Array | None,
               positions_BxT: jax.Array | None = None,
               cache: cache_lib.Cache | None = None,
               write_slots_BxT: jax.Array | None = None,
               attn_mask: masks.MaskSpec = None,
               inputs_embeds_BxTxD: jax.Array | None = None,
               layer_range: tuple[int, int] | None = None,
               return_hidden: bool = False,
               return_step_states: bool = False,
               parents_BxT: jax.Array | None = None,
               skip_layers_BxT: jax.Array | None = None,
               return_attention: bool = False,
               lora: Any = None,
               return_logits: bool = True) -> ModelOutput:
    """Runs layers [lo, hi) over T tokens.

    Args:
      tokens_BxT: int token ids; may be None when `inputs_embeds_BxTxD` is given.
      positions_BxT: logical positions for RoPE and position-based masks (default
        0..T-1). A negative position marks a padding token: never attended to, never written.
      cache: a `Cache` to attend over and write into, or None (training).
      write_slots_BxT: cache slots to write (default: the positions).
      attn_mask: see `models.masks` (None = causal by positions).
      inputs_embeds_BxTxD: replaces the token embedding (soft tokens, latent thoughts). When
        lo > 0 it is the residual stream entering layer lo, and is required.
      layer_range: (lo, hi), static; default all layers. The final norm and head are applied
        after layer hi - 1 (early exit).
      return_hidden: also return the per-layer residual stream.
      return_step_states: also return every recurrent layer's state after each token (for
        exact rollback, see `ModelOutput.step_states`); needs a cache.
      parents_BxT: token trees with recurrent layers: the index within this call of each
        token's parent (-1 = the committed prefix; parents precede children), so each token's
        recurrence starts from its parent's state. Attention layers ignore it (pass them the
        tree mask). Recurrent layers consume a call's valid tokens in call order otherwise,
        so a recurrent model refuses a non-causal `attn_mask` without `parents_BxT`.
      skip_layers_BxT: SkipDecode training (`training/objectives/skipdecode.py`): token (b, t)
        skips layers 0 .. skip[b, t] - 1, its embedding entering layer skip[b, t] unchanged
        (its residual stream passes those layers untouched). With skips that never decrease
        along a row's positions, this one forward equals decoding token by token with a cache
        whose skipped entries are never read (`decoding/skipdecode.py`). Default: none.
      return_attention: also return `attention_BxTxS`, the attention probabilities over the
        keys (cache slots with a cache) summed over the heads and the attention layers run
        (KV-cache eviction, `decoding/h2o.py`); computed beside the attention, in float32.
      lora: a `models.mask_mtp.GatedLoRA` (masked-input multi-token prediction): at the
        positions where its gate_BxT is True the input embedding is replaced by its
        mask_embed_BxTxD and every attention / MLP projection gets its low-rank update; the
        other positions compute exactly what they compute without it. Default: none.
      return_logits: False skips the output head (`logits_BxTxV` is None): for a caller that
        scores only some rows of it from `last_hidden_BxTxD` (a reduced draft vocabulary,
        `models.draft_vocab`), so the whole [V, D] head is never read.
    """
    cfg = self.cfg
    lo, hi = layer_range if layer_range is not None else (0, cfg.num_layers)
    if not 0 <= lo < hi <= cfg.num_layers:
      raise ValueError(f'layer_range {layer_range} must satisfy 0 <= lo < hi <= '
                       f'{cfg.num_layers}.')
    embedder = layers.Embedder(cfg, name='embed')
    if inputs_embeds_BxTxD is not None:
      x_BxTxD = inputs_embeds_BxTxD.astype(cfg.compute_dtype)
    elif lo > 0:
      raise ValueError('layer_range starting after layer 0 needs inputs_embeds_BxTxD: the '
                       f'residual stream entering layer {lo}.')
    elif tokens_BxT is None:
      raise ValueError('Pass tokens_BxT or inputs_embeds_BxTxD.')
    else:
      x_BxTxD = embedder(tokens_BxT)
    B, T = x_BxTxD.shape[:2]
    if lora is not None:
      if any(k != config_lib.ATTENTION for k in cfg.layer_types):
        raise ValueError('A gated LoRA (mask_mtp) needs an attention-only model; this one has '
                         f'layers {cfg.layer_types}.')
      if lora.mask_embed_BxTxD is not None:
        x_BxTxD = jnp.where(lora.gate_BxT[..., None],
                            lora.mask_embed_BxTxD.astype(x_BxTxD.dtype), x_BxTxD)
    default_positions = positions_BxT is None
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    positions_BxT = positions_BxT.astype(jnp.int32)

    kinds = cfg.layer_types[lo:hi]
    recurrent = config_lib.DELTAPRODUCT in kinds
    causal = attn_mask is None or (isinstance(attn_mask, str) and attn_mask == 'causal')
    if recurrent and not causal and parents_BxT is None:
      raise ValueError(
          f'attn_mask={attn_mask!r} on a model with recurrent (deltaproduct) layers: they read '
          'the tokens of a call in order. For a token tree pass parents_BxT too; bidirectional '
          'and block masks are not supported by recurrent layers.')
    if return_step_states and cache is None:
      raise ValueError('return_step_states=True needs a cache (the states are for rollback).')
    if parents_BxT is not None:
      parents_BxT = jnp.broadcast_to(jnp.asarray(parents_BxT, jnp.int32), (B, T))

    # ModelConfig.pad_rows='model': a call with fewer token rows than min_matmul_rows runs on
    # dummy tokens appended at position -1 (never attended to, never written) and drops them
    # at the end; the barrier keeps the compiler from slicing them off early.
    rows = layers.matmul_rows(cfg)
    pad_T = 0
    if (cfg.pad_rows == 'model' and B * T < rows and cache is not None and lora is None
        and skip_layers_BxT is None and parents_BxT is None and not return_step_states
        and not return_attention and causal):
      pad_T = -(-rows // B) - T
      x_BxTxD = jax.lax.optimization_barrier(
          jnp.pad(x_BxTxD, ((0, 0), (0, pad_T), (0, 0))))
      if write_slots_BxT is None:
        write_slots_BxT = positions_BxT
      positions_BxT, write_slots_BxT = (
          jnp.pad(a.astype(jnp.int32), ((0, 0), (0, pad_T)), constant_values=-1)
          for a in (positions_BxT, write_slots_BxT))

    if cache is None:
      slots_BxT = None
      key_pos_BxS, key_valid_BxS = positions_BxT, positions_BxT >= 0
      valid_BxT = positions_BxT >= 0
    else:
      if write_slots_BxT is None:
        write_slots_BxT = positions_BxT
      slots_BxT, key_pos_BxS, key_valid_BxS = cache.begin_write(positions_BxT, write_slots_BxT)
      valid_BxT = slots_BxT < cache.size
    mask_BxTxS = masks.build_mask(positions_BxT, key_pos_BxS, key_valid_BxS, attn_mask,
                                  window=cfg.sliding_window)
    # Default positions and no cache: a causal mask is causal by index (with the window), a
    # bidirectional one without a window sees every token; the attention runs those without
    # the array where a kernel takes that case.
    index_mask = None
    if default_positions and cache is None:
      if causal:
        index_mask = (True, cfg.sliding_window)
      elif (isinstance(attn_mask, str) and attn_mask == 'bidirectional'
            and not cfg.sliding_window):
        index_mask = (False, 0)

    hidden = [x_BxTxD]
    new_layers: list[Any] = list(cache.layers) if cache is not None else []
    step_layers: list[Any] = [None] * cfg.num_layers
    block_cls = Block
    if cfg.remat != 'none' and cache is None:
      # Arguments 8 and 9 (counting the module) are `return_step_states` and
      # `return_attention`, Python bools.
      policy = (jax.checkpoint_policies.dots_with_no_batch_dims_saveable
                if cfg.remat == 'dots' else None)
      block_cls = nn.remat(Block, static_argnums=(8, 9), policy=policy)
    attention_BxTxS = None
    for i in range(lo, hi):
      layer_cache = cache.layer(i) if cache is not None else None
      x_BxTxD, layer_cache, *rest = block_cls(cfg, cfg.layer_types[i], index_mask,
                                              name=f'layer_{i}')(
          x_BxTxD, positions_BxT, mask_BxTxS, layer_cache, slots_BxT, valid_BxT, parents_BxT,
          return_step_states, return_attention,
          *(() if lora is None else (lora.layers[f'layer_{i}'], lora.gate_BxT)))
      if return_attention:
        mass = rest.pop()
        if mass is not None:
          attention_BxTxS = mass if attention_BxTxS is None else attention_BxTxS + mass
      steps = rest
      if skip_layers_BxT is not None:  # skipped tokens keep the stream entering the layer
        x_BxTxD = jnp.where((i < skip_layers_BxT)[..., None], hidden[-1], x_BxTxD)
      if cache is not None:
        new_layers[i] = layer_cache
      if steps:
        step_layers[i] = steps[0]
      hidden.append(x_BxTxD)

    last_hidden_BxTxD = layers.RMSNorm(cfg.norm_eps, 'embed', cfg.weight_dtype,
                                       name='final_norm')(x_BxTxD)
    if not return_logits:
      logits_BxTxV = None
    elif cfg.tie_embeddings:
      logits_BxTxV = embedder.attend(last_hidden_BxTxD)
    else:
      w = layers.logical_param(self, 'lm_head', nn.initializers.normal(cfg.init_std),
                               (cfg.d_model, cfg.vocab_size), ('embed', 'vocab'),
                               cfg.weight_dtype)
      logits_BxTxV = jnp.einsum('BTD,DV->BTV', last_hidden_BxTxD,
                                w.astype(cfg.compute_dtype))
    if pad_T:  # drop the dummy tokens
      logits_BxTxV, last_hidden_BxTxD, hidden = jax.lax.optimization_barrier(
          (logits_BxTxV, last_hidden_BxTxD, hidden))
      if logits_BxTxV is not None:
        logits_BxTxV = logits_BxTxV[:, :T]
      last_hidden_BxTxD = last_hidden_BxTxD[:, :T]
      hidden = [h[:, :T] for h in hidden]
    new_cache = None
    if cache is not None:
      new_cache = cache.end_write(tuple(new_layers), key_pos_BxS, slots_BxT)
    step_states = None
    if return_step_states:
      step_states = delta_cache.StepStates(layers=tuple(step_layers), lengths_B=cache.lengths)
    if logits_BxTxV is not None:
      logits_BxTxV = layers.mask_invalid_ids(logits_BxTxV, cfg)
    return ModelOutput(logits_BxTxV=logits_BxTxV, cache=new_cache,
                       hidden=tuple(hidden) if return_hidden else None,
                       last_hidden_BxTxD=last_hidden_BxTxD, step_states=step_states,
                       attention_BxTxS=attention_BxTxS)


@functools.partial(jax.jit, static_argnums=(0, 2))
def init_params(model: Transformer, rng: jax.Array, seq_len: int = 8) -> Any:
  """Initialises parameters (plain arrays; logical axes via `logical_axes`).

  Jitted: one program, not one per operation of an eager `init` (81 small compiles for the
  `test` preset on a CPU, 2.9 s against 0.9 s), and the values the trainer's jitted
  initialisation gives.
  """
  tokens = jnp.zeros((1, seq_len), jnp.int32)
  return nn.unbox(model.init(rng, tokens))['params']


def logical_axes(model: Transformer) -> Any:
  """The params tree with PartitionSpecs of logical axis names as leaves."""
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  return nn.get_partition_spec(abstract)['params']


def fuse_projections(params: Any) -> Any:
  """Params with each attention layer's q, k, v fused into one `qkv` [D, K, G + 2, Dh] (kv
  head k: its G query heads, then its key, then its value) and each MLP's gate and up into
  one `gate_up` [D, 2, F] (`ModelConfig.fused_projections`); every other weight as it was.
  Any tree whose attention and MLP modules are named 'attn' and 'mlp' (a Transformer's
  layers, an EAGLE draft layer, heads' MLP blocks); layers already fused, DeltaProduct
  mixers and LoRA trees are left alone. The modules compute the same products from either
  layout."""
  if not isinstance(params, dict) and not hasattr(params, 'items'):
    return params
  out = {}
  for name, sub in params.items():
    if name == 'attn' and _is_weights(sub, ('q', 'k', 'v'), 3):
      wq, wk, wv = sub['q'], sub['k'], sub['v']
      D, H, Dh = wq.shape
      K = wk.shape[1]
      qkv = jnp.concatenate([wq.reshape(D, K, H // K, Dh), wk[:, :, None], wv[:, :, None]],
                            axis=2)
      out[name] = {**{k: v for k, v in sub.items() if k not in ('q', 'k', 'v')}, 'qkv': qkv}
    elif name == 'mlp' and _is_weights(sub, ('gate', 'up'), 2):
      out[name] = {**{k: v for k, v in sub.items() if k not in ('gate', 'up')},
                   'gate_up': jnp.stack([sub['gate'], sub['up']], axis=1)}
    else:
      out[name] = fuse_projections(sub)
  return out


def _is_weights(tree: Any, names: tuple[str, ...], ndim: int) -> bool:
  """`tree` holds arrays of rank `ndim` under every one of `names` (not LoRA sub-trees)."""
  return hasattr(tree, 'items') and all(
      hasattr(tree.get(n), 'ndim') and tree.get(n).ndim == ndim for n in names)
