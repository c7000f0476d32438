"""BitLM (Zhuang et al. 2026, arXiv 2605.11577): tokens as fixed-length binary codes and a
small diffusion head that denoises the codes of a block of K tokens at once.

  code      token id v < V  ->  b = ceil(log2 V) bits, most significant first
            (`encode_bits` / `decode_bits`); codes >= V are invalid (`valid_ids`).
  backbone  the house causal `Transformer` over tokens (one position, one KV entry per
            token; its vocabulary head is not used). Its final-normed hidden state at token
            t, h_t [D], summarises x_0 .. x_t.
            Or, with a folded head (`HeadShape.fold`, params['bitlm']['fold']), over blocks:
            one position and one KV entry per block of K tokens. Block j's input is
            sum_k e_k @ F_k (`fold_blocks`; e_k the token embedding of its slot k, or the
            learned `fold_pad` vector for a slot before the text's start; F_k [D, D]) and
            the hidden state at block j conditions block j + 1. Blocks are aligned to the
            end of the prompt (`prompt_blocks`): a prompt of P tokens fills ceil(P / K)
            blocks, the first left-padded with (-P) mod K pad slots; training rows are
            left-padded by a random 0 .. K - 1 slots, so every alignment is trained.
  head      conditioned on h_t, it reads a noisy code of the next K tokens
            x_{t+1} .. x_{t+K} and gives a logit per bit [K, b] for P(bit = 1) of the clean
            code. Two kinds (`HeadShape.kind`, read back from the params by `head_shape`):
              'masked'  (default) absorbing diffusion over the K x b bits: each bit 0, 1 or
                        masked (`head_logits`, `denoise_block`);
              'analog'  continuous analog-bit diffusion (Chen et al. 2022, the paper's head):
                        bits as +-1 reals, x_t = cos(pi t / 2) x_0 + sin(pi t / 2) eps
                        (cosine schedule, t in [0, 1]); the head reads x_t and t
                        (`analog_logits`) and predicts the clean bits; sampling runs DDIM
                        from Gaussian noise (`denoise_analog`) and thresholds at 0.
            The head's K slots attend to each other (bidirectional, inside the block);
            across blocks the model is causal (the backbone).

Decoding (`decoding/diffusion/bitlm.py`) runs the backbone once per block of K committed
tokens; the head fills the block's bits in a few denoising steps in between.

Why per-token positions are the default: the house cache, masks and RoPE serve it
unchanged, a block may start anywhere (ragged prompts need no padding to a block boundary)
and training uses every position as a block start. The price: one KV entry per token (as
AR). The folded backbone stores 1/K of them and runs its forwards over 1/K of the positions,
but trains on T / K block starts per row instead of T - K + 1 and conditions a block on the
previous block's state only (the tokens of the newest block reach the head through the
backbone, not through a per-token state).

Differences from the paper: the paper denoises the bits with a continuous (analog-bit)
diffusion head, the 'analog' kind here (without self-conditioning); the default 'masked'
kind is an absorbing-state diffusion over bits, whose training loss is an upper bound on the
NLL (MDLM's ELBO), so its quality is comparable with an AR model's NLL (the analog head's
loss bounds nothing). The head's kind and shape (block size K, bits, width, layers, heads)
are read from its parameters (`head_shape`), so a run needs no extra config to decode.

Axis letters: B batch, T tokens, D backbone width, K block slots, b bits per token, W head
width, H head heads, Dh head head width.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from models import layers
import pallas_kernels.common as kernel_common

BITLM = 'bitlm'
MASKED = 2  # bit state: 0, 1 or masked
HEAD_KINDS = ('masked', 'analog')
TIME_FEATURES = 32  # sinusoidal features of the analog head's noise level t


def check_head_kind(kind: str) -> str:
  if kind not in HEAD_KINDS:
    raise ValueError(f'BitLM head kind must be one of {HEAD_KINDS}, got {kind!r}.')
  return kind


def num_bits(vocab_size: int) -> int:
  """Bits per token: ceil(log2 V), at least 1."""
  if vocab_size < 1:
    raise ValueError(f'BitLM needs a vocabulary of at least one token, got {vocab_size}.')
  return max(1, (vocab_size - 1).bit_length())


def encode_bits(ids: jax.Array, nbits: int) -> jax.Array:
  """[...] int ids -> [..., b] int32 bits, most significant first."""
  shifts = jnp.arange(nbits - 1, -1, -1, dtype=jnp.int32)
  return (ids.astype(jnp.int32)[..., None] >> shifts) & 1


def decode_bits(bits: jax.Array) -> jax.Array:
  """[..., b] bits (0/1) -> [...] int32 ids (may be >= V: see `valid_ids`)."""
  nbits = bits.shape[-1]
  weights = 1 << jnp.arange(nbits - 1, -1, -1, dtype=jnp.int32)
  return jnp.sum(bits.astype(jnp.int32) * weights, axis=-1)


def valid_ids(ids: jax.Array, bit_logits: jax.Array, vocab_size: int) -> jax.Array:
  """The stated rule for invalid codes: an id >= V is replaced by the valid id whose code the
  bit logits like best, argmax_{v < V} sum_j log P(bit_j = code(v)_j) (independent bits under
  the given logits). ids: [...]; bit_logits: [..., b] (logit of P(bit = 1)). Valid ids are
  kept."""
  nbits = bit_logits.shape[-1]
  codes_Vxb = encode_bits(jnp.arange(vocab_size), nbits).astype(jnp.float32)
  l = bit_logits.astype(jnp.float32)
  score = (jax.nn.log_sigmoid(l) @ codes_Vxb.T + jax.nn.log_sigmoid(-l) @ (1 - codes_Vxb).T)
  best = jnp.argmax(score, axis=-1).astype(jnp.int32)
  return jnp.where(ids < vocab_size, ids, best)


@dataclasses.dataclass(frozen=True)
class HeadShape:
  """The head's sizes: block (K), bits (b), width (W), layers, heads (H), mlp width, cond (D),
  and its kind ('masked' or 'analog', see the module docstring)."""
  block: int
  bits: int
  width: int
  layers: int
  heads: int
  mlp: int
  cond: int
  kind: str = 'masked'
  fold: bool = False  # one backbone position per block (module docstring)

  def __post_init__(self):
    check_head_kind(self.kind)
    for name in ('block', 'bits', 'width', 'layers', 'heads', 'mlp', 'cond'):
      if getattr(self, name) < 1:
        raise ValueError(f'BitLM head: {name} must be >= 1, got {getattr(self, name)}.')
    if self.width % self.heads:
      raise ValueError(f'BitLM head: width {self.width} is not a multiple of heads '
                       f'{self.heads}.')


def head_shape(p: Any) -> HeadShape:
  """The `HeadShape` of trained head params (params['bitlm']); an analog head is the one with
  a `bit_in` projection (a masked one embeds bit states: `bit_embed`)."""
  if 'bit_in' in p:
    kind, (nbits, W) = 'analog', p['bit_in'].shape
  else:
    kind, (nbits, _, W) = 'masked', p['bit_embed'].shape
  layers = sum(1 for k in p if k.startswith('layer_'))
  _, H, _ = p['layer_0']['q'].shape
  return HeadShape(block=p['slot_embed'].shape[0], bits=nbits, width=W, layers=layers,
                   heads=H, mlp=p['layer_0']['up'].shape[1], cond=p['cond'].shape[0],
                   kind=kind, fold='fold' in p)


def init_head(shape: HeadShape, rng: jax.Array) -> dict[str, Any]:
  """Fresh head params (float32)."""
  W, Dh = shape.width, shape.width // shape.heads
  keys = iter(jax.random.split(rng, 4 + 6 * shape.layers))
  normal = lambda shp, fan_in: jax.random.normal(next(keys), shp, jnp.float32) / math.sqrt(
      fan_in)
  p = {'bit_embed': normal((shape.bits, 3, W), 1.0) * 0.5,
       'slot_embed': normal((shape.block, W), 1.0) * 0.5,
       'cond': normal((shape.cond, W), shape.cond),
       'out_norm': jnp.ones((W,), jnp.float32),
       'out': normal((W, shape.bits), W), 'out_bias': jnp.zeros((shape.bits,), jnp.float32)}
  for i in range(shape.layers):
    p[f'layer_{i}'] = {
        'attn_norm': jnp.ones((W,), jnp.float32), 'mlp_norm': jnp.ones((W,), jnp.float32),
        'q': normal((W, shape.heads, Dh), W), 'k': normal((W, shape.heads, Dh), W),
        'v': normal((W, shape.heads, Dh), W), 'o': normal((shape.heads, Dh, W), W),
        'up': normal((W, shape.mlp), W), 'down': normal((shape.mlp, W), shape.mlp)}
  if shape.kind == 'analog':  # noisy bit values in, a noise-level embedding (own keys, so the
    del p['bit_embed']        # masked head's init is unchanged)
    k_in, k_t1, k_t2 = jax.random.split(jax.random.fold_in(rng, 1), 3)
    F = TIME_FEATURES
    p['bit_in'] = jax.random.normal(k_in, (shape.bits, W), jnp.float32) / math.sqrt(shape.bits)
    p['time_in'] = jax.random.normal(k_t1, (F, W), jnp.float32) / math.sqrt(F)
    p['time_out'] = jax.random.normal(k_t2, (W, W), jnp.float32) / math.sqrt(W)
  if shape.fold:  # own keys: the unfolded heads' init is unchanged
    k_f, k_p = jax.random.split(jax.random.fold_in(rng, 2))
    K, D = shape.block, shape.cond
    # sum of K terms e_k @ F_k keeps the embedding's scale when F's entries have variance
    # 1 / (K D); the pad slot starts at the scale of a token embedding (init_std 0.02).
    p['fold'] = jax.random.normal(k_f, (K, D, D), jnp.float32) / math.sqrt(K * D)
    p['fold_pad'] = 0.02 * jax.random.normal(k_p, (D,), jnp.float32)
  return p


def fold_blocks(cfg: Any, base_params: Any, head: Any, blocks_xK: jax.Array,
                valid_xK: jax.Array) -> jax.Array:
  """The folded backbone's input [..., D] (cfg.compute_dtype) of blocks of K token ids
  [..., K]: sum_k e_k @ F_k, where e_k is the backbone's token embedding of slot k, or the
  head's `fold_pad` vector where valid[..., k] is False."""
  if 'fold' not in head:
    raise ValueError('BitLM: fold_blocks needs a folded head (params with fold); this head '
                     'conditions on per-token backbone states.')
  K = head['fold'].shape[0]
  if blocks_xK.shape[-1] != K:
    raise ValueError(f'BitLM: blocks of {blocks_xK.shape[-1]} tokens, but the fold was built '
                     f'for K = {K}.')
  dt = cfg.compute_dtype
  emb = layers.Embedder(cfg).apply({'params': base_params['embed']}, blocks_xK).astype(dt)
  emb = jnp.where(valid_xK[..., None], emb, head['fold_pad'].astype(dt))
  return jnp.einsum('...KD,KDE->...E', emb, head['fold'].astype(dt))


def shifted_blocks(tokens_BxL: jax.Array, length_B: jax.Array, offset_B: jax.Array, block: int,
                   num_blocks: int) -> tuple[jax.Array, jax.Array]:
  """Rows cut into `num_blocks` blocks of K slots after `offset[b]` pad slots: slot i of row b
  holds token i - offset[b], valid while that is in 0 .. length[b] - 1.

  Returns (ids [B, N, K] (0 at an invalid slot), valid [B, N, K])."""
  B, L = tokens_BxL.shape
  i_BxNK = (jnp.arange(num_blocks * block, dtype=jnp.int32)[None]
            - offset_B.astype(jnp.int32)[:, None])
  valid = (i_BxNK >= 0) & (i_BxNK < length_B.astype(jnp.int32)[:, None])
  ids = jnp.take_along_axis(tokens_BxL.astype(jnp.int32), jnp.clip(i_BxNK, 0, L - 1), axis=1)
  return (jnp.where(valid, ids, 0).reshape(B, num_blocks, block),
          valid.reshape(B, num_blocks, block))


def prompt_blocks(prompt_BxP: jax.Array, prompt_len_B: jax.Array, block: int
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """A ragged batch of prompts (right-padded [B, P], lengths [B]) as blocks of K aligned to
  each prompt's end: row b fills n_b = ceil(len_b / K) blocks (at least one), its first
  block left-padded with (-len_b) mod K slots.

  Returns (token ids [B, M, K] with M = ceil(P / K) (0 where not a token), valid [B, M, K]
  (a prompt token), n_B [B] int32 (the row's blocks; blocks >= n_b are empty))."""
  length_B = prompt_len_B.astype(jnp.int32)
  M = max(1, -(-prompt_BxP.shape[1] // block))
  ids, valid = shifted_blocks(prompt_BxP, length_B, (-length_B) % block, block, M)
  return ids, valid, jnp.maximum(-(-length_B // block), 1)


def _rms(x: jax.Array, scale: jax.Array, eps: float = 1e-6) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * scale


def head_logits(p: Any, cond_BxD: jax.Array, state_BxKxb: jax.Array) -> jax.Array:
  """The head: bit logits [B, K, b] (float32, logit of P(bit = 1)) of the block's code given
  the backbone's hidden state h_t [B, D] and the current bits [B, K, b] (0, 1 or MASKED).

  Each slot's input is the sum over its bits of an embedding of (bit index, state), plus a
  slot embedding and the projected condition; then pre-norm layers of bidirectional
  attention among the K slots and a GELU MLP."""
  if 'bit_embed' not in p:
    raise ValueError('BitLM: head_logits reads bit states (a masked head); an analog head '
                     'reads noisy bit values: use analog_logits.')
  onehot = jax.nn.one_hot(state_BxKxb, 3, dtype=jnp.float32)  # [B, K, b, 3]: a matmul, not a
  x = jnp.einsum('BKbs,bsW->BKW', onehot, p['bit_embed'])        # gather (fast gradients)
  return _trunk(p, cond_BxD, x)


def time_features(t_B: jax.Array) -> jax.Array:
  """[B, TIME_FEATURES] sinusoidal features of noise levels t in [0, 1]."""
  half = TIME_FEATURES // 2
  freqs = jnp.exp(-math.log(1000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  ang = 1000.0 * t_B.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1)


def analog_logits(p: Any, cond_BxD: jax.Array, x_BxKxb: jax.Array, t_B: jax.Array
                  ) -> jax.Array:
  """The analog head: logits [B, K, b] (float32) of P(clean bit = 1) given h_t [B, D], the
  noisy bit values x_t [B, K, b] (reals; clean bits are -1 / +1) and the noise level t [B].

  Each slot's input is the linear projection of its b values, plus a slot embedding, the
  projected condition and an MLP of t's sinusoidal features; then the masked head's layers."""
  if 'bit_in' not in p:
    raise ValueError('BitLM: analog_logits needs an analog head (params with bit_in).')
  x = x_BxKxb.astype(jnp.float32) @ p['bit_in']
  temb = jax.nn.gelu(time_features(t_B) @ p['time_in']) @ p['time_out']
  return _trunk(p, cond_BxD, x + temb[:, None])


def _trunk(p: Any, cond_BxD: jax.Array, x: jax.Array) -> jax.Array:
  """Slot inputs x [B, K, W] -> bit logits [B, K, b]: slot embedding and projected condition
  added, pre-norm layers of bidirectional attention among the K slots and a GELU MLP."""
  x = x + p['slot_embed'][None] + (cond_BxD.astype(jnp.float32) @ p['cond'])[:, None]
  i = 0
  while f'layer_{i}' in p:
    lp = p[f'layer_{i}']
    y = _rms(x, lp['attn_norm'])
    q = jnp.einsum('BKW,WHd->BKHd', y, lp['q'])
    k = jnp.einsum('BKW,WHd->BKHd', y, lp['k'])
    v = jnp.einsum('BKW,WHd->BKHd', y, lp['v'])
    att = jax.nn.softmax(jnp.einsum('BKHd,BJHd->BHKJ', q, k) / math.sqrt(q.shape[-1]), -1)
    x = x + jnp.einsum('BHKJ,BJHd,HdW->BKW', att, v, lp['o'])
    x = x + jax.nn.gelu(_rms(x, lp['mlp_norm']) @ lp['up']) @ lp['down']
    i += 1
  return _rms(x, p['out_norm']) @ p['out'] + p['out_bias']


def unmask_counts(total: int, steps: int) -> list[int]:
  """Bits committed at each of `steps` denoising steps (as even as integers allow; sum =
  total, each >= 1)."""
  if not 1 <= steps <= total:
    raise ValueError(f'BitLM: steps must be in 1 .. {total} (the bits of a block), got '
                     f'{steps}.')
  marks = [round(total * (s + 1) / steps) for s in range(steps)]
  return [m - n for m, n in zip(marks, [0] + marks[:-1])]


def check_steps(shape: HeadShape, steps: int, temperature: float = 0.0) -> int:
  """`steps` if the head can run it (masked: 1 .. K x b; analog: >= 1, and temperature, its
  DDIM eta, in [0, 1]); ValueError otherwise."""
  if shape.kind == 'masked':
    unmask_counts(shape.block * shape.bits, steps)
  else:
    if steps < 1:
      raise ValueError(f'BitLM (analog head): steps must be >= 1, got {steps}.')
    if not 0.0 <= temperature <= 1.0:
      raise ValueError('BitLM (analog head): temperature is the DDIM eta (0 = deterministic, '
                       f'1 = ancestral DDPM) and must be in [0, 1], got {temperature}.')
  return steps


def analog_schedule(t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(signal, noise) scales of the cosine schedule at noise level t in [0, 1]:
  x_t = cos(pi t / 2) x_0 + sin(pi t / 2) eps; t = 0 is clean, t = 1 pure noise."""
  t = jnp.asarray(t, jnp.float32)
  return jnp.cos(0.5 * math.pi * t), jnp.sin(0.5 * math.pi * t)


def noise_bits(bits: jax.Array, t_N: jax.Array, eps: jax.Array) -> jax.Array:
  """x_t [N, ...] of clean bits (0/1 -> -1/+1) [N, ...] at noise levels t [N] with standard
  Gaussian eps [N, ...]."""
  a, s = analog_schedule(t_N)
  a, s = a.reshape((-1,) + (1,) * (bits.ndim - 1)), s.reshape((-1,) + (1,) * (bits.ndim - 1))
  return a * (2.0 * bits.astype(jnp.float32) - 1.0) + s * eps


def analog_times(steps: int) -> jax.Array:
  """[steps + 1] the sampler's noise levels, 1 = t_0 > t_1 > ... > t_steps = 0 (uniform)."""
  return 1.0 - jnp.arange(steps + 1, dtype=jnp.float32) / steps


def ddim_update(x: jax.Array, logits: jax.Array, t: jax.Array, t_next: jax.Array,
                eta: float, z: jax.Array) -> jax.Array:
  """One DDIM update from noise level t to t_next < t (scalars): the head's clean estimate
  x0 = E[+-1 bit] = tanh(logit / 2), eps = (x - a x0) / s, then
  x' = a' x0 + sqrt(s'^2 - sigma^2) eps + sigma z, sigma = eta s'/s sqrt(1 - a^2/a'^2)
  (eta 0: deterministic DDIM; 1: ancestral DDPM). At t_next = 0, x' = x0."""
  a, s = analog_schedule(t)
  a2, s2 = analog_schedule(t_next)
  x0 = jnp.tanh(0.5 * logits)
  eps = (x - a * x0) / s
  sigma = eta * s2 / s * jnp.sqrt(jnp.maximum(1.0 - (a / a2) ** 2, 0.0))
  return a2 * x0 + jnp.sqrt(jnp.maximum(s2 ** 2 - sigma ** 2, 0.0)) * eps + sigma * z


def denoise_analog(p: Any, cond_BxD: jax.Array, steps: int, vocab_size: int, *,
                   temperature: float = 0.0, keys_B: jax.Array | None = None
                   ) -> tuple[jax.Array, jax.Array]:
  """The analog head's block: x_{t_0} ~ N(0, I) [K, b] per row from fold_in(keys_B[b], 0),
  then `steps` head calls, each a `ddim_update` from t_s to t_{s+1} (`analog_times`) with
  eta = temperature (its fresh noise from fold_in(keys_B[b], s + 1)). The last update lands
  on t = 0, where x is the head's last clean estimate: the bits are the signs of its last
  logits, and codes >= V are replaced by `valid_ids` under those logits. Temperature 0 is
  deterministic given the row keys (the starting noise is always drawn).

  Returns (ids [B, K] int32, all < V; bits [B, K, b] before the invalid-code rule)."""
  _, logits = analog_sample(p, cond_BxD, steps, temperature=temperature, keys_B=keys_B)
  bits = (logits > 0).astype(jnp.int32)
  return valid_ids(decode_bits(bits), logits, vocab_size), bits


def analog_sample(p: Any, cond_BxD: jax.Array, steps: int, *, temperature: float,
                  keys_B: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """`denoise_analog`'s DDIM loop: (x at noise level 0 [B, K, b], the last head logits
  [B, K, b]); x = tanh(last logits / 2)."""
  shape = head_shape(p)
  check_steps(shape, steps, temperature)
  if keys_B is None:
    raise ValueError('BitLM (analog head): sampling starts from per-row noise; pass keys_B.')
  B, K, nb = cond_BxD.shape[0], shape.block, shape.bits
  ts = analog_times(steps)
  normal = lambda i: jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), (K, nb)))(
      keys_B)

  def step(s, carry):
    x, _ = carry
    logits = analog_logits(p, cond_BxD, x, jnp.full((B,), ts[s]))
    z = normal(s + 1) if temperature else jnp.zeros_like(x)
    return ddim_update(x, logits, ts[s], ts[s + 1], temperature, z), logits

  return jax.lax.fori_loop(0, steps, step, (normal(0), jnp.zeros((B, K, nb), jnp.float32)))


def denoise_block(p: Any, cond_BxD: jax.Array, steps: int, vocab_size: int, *,
                  temperature: float = 0.0, keys_B: jax.Array | None = None
                  ) -> tuple[jax.Array, jax.Array]:
  """Fills a block's K x b bits in `steps` head calls: an analog head runs `denoise_analog`;
  a masked one starts from all-masked, as follows.

  Each step the head scores every bit; a value is drawn per masked bit (greedy: logit > 0;
  else Bernoulli(sigmoid(logit / temperature)) with keys_B[b] folded with the step) and the
  `unmask_counts` most confident masked bits (largest log-probability of their drawn value;
  ties: lowest index) are committed. Codes >= V are replaced by `valid_ids` under the logits
  each bit was committed with.

  Returns (ids [B, K] int32, all < V; bits [B, K, b] before the invalid-code rule).
  """
  shape = head_shape(p)
  if shape.kind == 'analog':
    return denoise_analog(p, cond_BxD, steps, vocab_size, temperature=temperature,
                          keys_B=keys_B)
  B, K, nb = cond_BxD.shape[0], shape.block, shape.bits
  M = K * nb
  counts = jnp.asarray(unmask_counts(M, steps), jnp.int32)
  greedy = temperature == 0.0
  if not greedy and keys_B is None:
    raise ValueError('BitLM: sampling (temperature > 0) needs per-row keys.')

  def step(s, carry):
    state, committed = carry
    logits = head_logits(p, cond_BxD, state)
    if greedy:
      value = (logits > 0).astype(jnp.int32)
    else:
      u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, s), (K, nb)))(keys_B)
      value = (u < jax.nn.sigmoid(logits / temperature)).astype(jnp.int32)
    conf = jax.nn.log_sigmoid(jnp.where(value == 1, logits, -logits)).reshape(B, M)
    masked = (state == MASKED).reshape(B, M)
    conf = jnp.where(masked, conf, -jnp.inf)
    rank = kernel_common.ranks_descending(conf)  # ties: lowest index first
    take = (masked & (rank < counts[s])).reshape(B, K, nb)
    return (jnp.where(take, value, state), jnp.where(take, logits, committed))

  state = jnp.full((B, K, nb), MASKED, jnp.int32)
  state, logits = jax.lax.fori_loop(0, steps, step, (state, jnp.zeros((B, K, nb), jnp.float32)))
  return valid_ids(decode_bits(state), logits, vocab_size), state
