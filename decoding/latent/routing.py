"""Routing between a small and a large model: who writes each step / token.

The target (`--workdir`) is the SMALL model; the large one is an extra model
(`large_workdir`, params['large']). Both see every committed token (their caches stay in
sync), so the output is one sequence written partly by each model; `large_tokens` counts the
tokens the large model wrote, the budget the routers trade against accuracy (`large_mask`
[B, N] marks them); `steps` / `large_steps` count the steps begun (a step starts at the first
token and after a token in `step_end_ids`) and those begun by the large model.

  glimprouter  step level (GlimpRouter): at the start of each step (after a token in
               `step_end_ids`, and at the first token; our tasks end steps with '.') the small model's top-20 entropy of
               the next token decides: >= `threshold` -> the large model writes the step.
  r2r          token level (R2R-style): a small MLP over the small model's top-k
               log-probabilities, last hidden state and the embedding of its top token
               predicts that the small model diverges from the large one; p >= threshold
               -> the large model writes the token. `random_fraction` > 0 replaces the router
               by a coin with that probability (the random baseline at equal budget).
  arbitrage    step level (Arbitrage, arbitrage.py): the same MLP at a step's first token
               predicts that the large model's step would be better (advantage labels;
               its router is fitted by benchmarks/latent_arbitrage.py).

The router's parameters come from params['router'] if given, else from the .npz file
`router_path` (written by benchmarks/latent_router.py, which trains it on divergence labels).
Lossy with respect to the large model (its quality is the ceiling); report accuracy against
the large-model fraction (benchmarks/latent.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from decoding import base
from decoding import registry
from decoding import sampling as sampling_lib
from decoding.latent import feedback
from models import cache as cache_lib
import pallas_kernels.common as kernel_common

ROUTER_TOPK = 8
STEP_END_IDS = (ord('.'), ord('\n'), 262)  # byte tokenizer: '.', newline, </think>
ROUTE_SALT = 0x0A7E


# ------------------------------------------------------------------------------ router
def router_features(logits_BxV: jax.Array, hidden_BxD: jax.Array, embed_VxD: jax.Array
                    ) -> jax.Array:
  """[B, K + 1 + 2D]: sorted top-K log-probs, entropy, hidden state, E[top token]."""
  logp_BxV = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), -1)
  top_BxK, ids_BxK = kernel_common.top_k(logp_BxV, ROUTER_TOPK)
  H_B = feedback.entropy(logits_BxV)
  e_BxD = jnp.take(embed_VxD, ids_BxK[:, 0], axis=0).astype(jnp.float32)
  return jnp.concatenate([top_BxK, H_B[:, None], hidden_BxD.astype(jnp.float32), e_BxD], -1)


def init_router(rng: jax.Array, num_features: int, width: int = 64) -> dict[str, jax.Array]:
  k1, k2 = jax.random.split(rng)
  return {'mean': jnp.zeros((num_features,)), 'scale': jnp.ones((num_features,)),
          'w1': jax.random.normal(k1, (num_features, width)) / np.sqrt(num_features),
          'b1': jnp.zeros((width,)), 'w2': jax.random.normal(k2, (width, 1)) / np.sqrt(width),
          'b2': jnp.zeros((1,))}


def router_logit(router: dict[str, jax.Array], feats_BxF: jax.Array) -> jax.Array:
  """The MLP: logit of P(small diverges from large) [B] (features standardised first)."""
  x = (feats_BxF - router['mean']) / router['scale']
  h = jax.nn.gelu(x @ router['w1'] + router['b1'])
  return (h @ router['w2'] + router['b2'])[:, 0]


def save_router(path: str, router: dict[str, Any]) -> None:
  np.savez(path, **{k: np.asarray(v) for k, v in router.items()})


@functools.lru_cache(maxsize=8)
def load_router(path: str) -> dict[str, np.ndarray]:
  if not path:
    raise ValueError('r2r needs a router: params["router"] or --decoder_config.router_path '
                     '(train one with benchmarks/latent_router.py), or random_fraction > 0.')
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


# ------------------------------------------------------------------------------ loop
@flax.struct.dataclass
class RouteState:
  """Both caches hold every committed token; logits/hidden are for the next token.
  writer_B: the large model writes the current step (GlimpRouter, Arbitrage). steps_B /
  large_steps_B: steps begun / begun by the large model. progress: tokens, counts and done
  flags (`base.Progress`; both models run once per token, counted at the end)."""
  cache_s: Any
  cache_l: Any
  logits_s: jax.Array
  hidden_s: jax.Array
  logits_l: jax.Array
  progress: base.Progress
  large_BxN: jax.Array
  large_B: jax.Array
  writer_B: jax.Array
  steps_B: jax.Array
  large_steps_B: jax.Array


def _forward(model, params, tok_B, pos_B, cache):
  out = model.apply({'params': params}, tok_B[:, None], pos_B[:, None], cache=cache)
  return out.logits_BxTxV[:, 0], out.last_hidden_BxTxD[:, 0], out.cache


def _prefill(model, params, prompt_BxP, prompt_len_B, cache_size):
  B = prompt_BxP.shape[0]
  logits, cache, out = base.prefill(model, params, prompt_BxP, prompt_len_B,
                                    cache_lib.Cache.init(model.cfg, B, cache_size))
  last = jnp.maximum(prompt_len_B - 1, 0)[:, None, None]
  return logits, jnp.take_along_axis(out.last_hidden_BxTxD, last, 1)[:, 0], cache


@dataclasses.dataclass(frozen=True)
class RoutingDecoder(base.Decoder):
  """Shared loop of the routers (subclasses define `route`); not registered."""
  family: ClassVar[str] = 'routing'
  lossless: ClassVar[bool] = False
  large_workdir: str = ''
  threshold: float = 1.0
  step_end_ids: tuple[int, ...] = STEP_END_IDS

  def extra_models(self) -> dict[str, str]:
    if not self.large_workdir:
      raise ValueError(f'{self.name} needs --decoder_config.large_workdir (the large model).')
    return {'large': self.large_workdir}

  def route(self, s: RouteState, params: dict[str, Any], embed_VxD: jax.Array,
            keys_B: jax.Array, step_start_B: jax.Array) -> jax.Array:
    raise NotImplementedError

  def generate(self, models: base.Models, params: dict[str, Any], prompt_BxP: jax.Array,
               prompt_len_B: jax.Array, row_keys_B: jax.Array, *, max_new_tokens: int,
               cache_size: int, eos_id: int, pad_id: int) -> base.DecodeResult:
    small, large = models.target, models['large']
    ps, pl = params['target'], params['large']
    B, N = prompt_BxP.shape[0], max_new_tokens
    logits_s, hidden_s, cache_s = _prefill(small, ps, prompt_BxP, prompt_len_B, cache_size)
    logits_l, _, cache_l = _prefill(large, pl, prompt_BxP, prompt_len_B, cache_size)
    zeros = jnp.zeros((B,), jnp.int32)
    state = RouteState(cache_s=cache_s, cache_l=cache_l, logits_s=logits_s, hidden_s=hidden_s,
                       logits_l=logits_l, progress=base.Progress.start(B, N, pad_id=pad_id),
                       large_BxN=jnp.zeros((B, N), jnp.int32), large_B=zeros,
                       writer_B=jnp.zeros((B,), jnp.bool_), steps_B=zeros,
                       large_steps_B=zeros)
    step_end = jnp.asarray(self.step_end_ids, jnp.int32)

    def step_fn(s: RouteState) -> RouteState:
      active_B = s.progress.active_B
      num_B = s.progress.num_generated_B
      pos_B = prompt_len_B + num_B
      keys_B = sampling_lib.token_keys(row_keys_B, pos_B)
      prev_B = jnp.take_along_axis(s.progress.tokens_BxN, jnp.maximum(num_B - 1, 0)[:, None],
                                   1)[:, 0]
      step_start_B = (num_B == 0) | jnp.isin(prev_B, step_end)
      use_large_B = self.route(s, params, ps['embed']['embedding'], keys_B, step_start_B)
      tok_B = sampling_lib.sample(keys_B, jnp.where(use_large_B[:, None], s.logits_l,
                                                    s.logits_s), self.sampling)
      feed_pos = jnp.where(active_B, pos_B, -1)
      ls, hs, cs = _forward(small, ps, tok_B, feed_pos, s.cache_s)
      ll, _, cl = _forward(large, pl, tok_B, feed_pos, s.cache_l)
      keep = active_B[:, None]
      return s.replace(
          cache_s=cs, cache_l=cl, logits_s=jnp.where(keep, ls, s.logits_s),
          hidden_s=jnp.where(keep, hs, s.hidden_s), logits_l=jnp.where(keep, ll, s.logits_l),
          progress=s.progress.commit(tok_B[:, None], active_B.astype(jnp.int32),
                                     active_B & (tok_B == eos_id), N),
          large_BxN=base.write_tokens(s.large_BxN, use_large_B[:, None].astype(jnp.int32),
                                      num_B, active_B.astype(jnp.int32)),
          large_B=s.large_B + (active_B & use_large_B), writer_B=use_large_B,
          steps_B=s.steps_B + (active_B & step_start_B),
          large_steps_B=s.large_steps_B + (active_B & step_start_B & use_large_B))

    state = jax.lax.while_loop(lambda s: ~jnp.all(s.progress.done_B), step_fn, state)
    n = state.progress.num_generated_B
    progress = state.progress.replace(target_forwards_B=n + 1, other_forwards_B=n + 1,
                                      hist_BxM=jnp.stack([zeros, n], 1))
    return progress.result({'large_tokens': state.large_B, 'large_mask': state.large_BxN,
                            'steps': state.steps_B, 'large_steps': state.large_steps_B})


@registry.register
@dataclasses.dataclass(frozen=True)
class GlimpRouterDecoder(RoutingDecoder):
  """GlimpRouter (lossy): the small model's step-start entropy picks who writes a step.

  Top-`top_k_entropy` entropy >= threshold at a step's first token: the large model writes
  the step."""
  name: ClassVar[str] = 'glimprouter'
  threshold: float = 1.0
  top_k_entropy: int = 20
  random_fraction: float = 0.0

  def route(self, s, params, embed_VxD, keys_B, step_start_B):
    if self.random_fraction > 0:
      coin = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, ROUTE_SALT)))(keys_B)
      decide_B = coin < self.random_fraction
    else:
      decide_B = feedback.topk_entropy(s.logits_s, self.top_k_entropy) >= self.threshold
    return jnp.where(step_start_B, decide_B, s.writer_B)


@registry.register
@dataclasses.dataclass(frozen=True)
class R2RDecoder(RoutingDecoder):
  """R2R-style token router (lossy): an MLP predicts small/large divergence per token.

  Router probability >= threshold: the large model writes the token. Subclasses that route
  whole steps (arbitrage.py) reuse `wants_large` at a step's first token."""
  name: ClassVar[str] = 'r2r'
  route_salt: ClassVar[int] = ROUTE_SALT
  router_script: ClassVar[str] = 'benchmarks/latent_router.py'  # fits the router
  threshold: float = 0.5
  router_path: str = ''
  random_fraction: float = 0.0

  def __post_init__(self):
    if not math.isfinite(self.threshold):
      raise ValueError(f'{self.name} threshold must be finite (> 1: small model only, < 0: '
                       f'large model only), got {self.threshold}.')
    if not 0.0 <= self.random_fraction <= 1.0:
      raise ValueError(f'{self.name} random_fraction must be in [0, 1], got '
                       f'{self.random_fraction}.')

  def router(self, params: dict[str, Any]) -> dict[str, jax.Array]:
    """The router's parameters: params['router'], else the .npz file `router_path`."""
    if params.get('router') is not None:
      return params['router']
    if not self.router_path:
      raise ValueError(f'{self.name} needs a router: params["router"] or '
                       f'--decoder_config.router_path (train one with {self.router_script}), '
                       'or random_fraction > 0.')
    return jax.tree.map(jnp.asarray, load_router(self.router_path))

  def wants_large(self, s, params, embed_VxD, keys_B) -> jax.Array:
    """[B] bool: the router's probability >= threshold (or the random baseline's coin)."""
    if self.random_fraction > 0:
      coin = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, self.route_salt)))(
          keys_B)
      return coin < self.random_fraction
    p_B = jax.nn.sigmoid(router_logit(self.router(params),
                                      router_features(s.logits_s, s.hidden_s, embed_VxD)))
    return p_B >= self.threshold

  def route(self, s, params, embed_VxD, keys_B, step_start_B):
    del step_start_B
    return self.wants_large(s, params, embed_VxD, keys_B)
