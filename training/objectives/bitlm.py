"""BitLM (models/bitlm.py): `bitlm` trains a causal backbone and a bitwise diffusion head from
scratch.

Training row: tokens x_0 .. x_T; the backbone reads x_0 .. x_{T-1} (causal) and gives h_t.
Every t with a full block after it (t = 0 .. T - K) is a block start: the head, conditioned
on h_t, denoises the code of x_{t+1} .. x_{t+K} (K x b bits). Per block, an absorbing
diffusion over its bits with the linear schedule (MDLM): draw r ~ U(eps, 1), mask each bit
independently with probability r, and

  loss_block = (1 / r) * sum over masked bits of BCE(head logit, true bit) / K

in nats per token. Its expectation over r and the masks is an upper bound on
-log p(x_{t+1..t+K} | x_<=t) / K under the head's diffusion model (MDLM's ELBO; the bound
also pays for any mass on invalid codes), so it compares with an AR model's next-token loss.

With `head='analog'` (continuous analog-bit diffusion, models/bitlm.py): per block draw a
noise level t ~ U(0, 1) and eps ~ N(0, I) [K, b], noise the +-1 bits with the cosine schedule
(x_t = cos(pi t / 2) x_0 + sin(pi t / 2) eps) and

  loss_block = sum over all bits of BCE(head logit given x_t and t, true bit) / K

in nats per token: the clean-bit cross-entropy averaged over noise levels (its sigmoid gives
E[x_0 | x_t], the x0 estimate the DDIM sampler uses). It is not a bound on the NLL.

With `fold=True` (one backbone position per block, models/bitlm.py): each row of L tokens is
left-padded by a random o in 0 .. K - 1 pad slots (the tokens after L - o dropped) and cut
into N = L // K blocks; the backbone reads the folded blocks 0 .. N - 2 at positions
0 .. N - 2 and its state at block j conditions block j + 1 (whose tokens are all text, as
o < K), with the same per-block loss as above: N - 1 block starts per row instead of
T - K + 1.

The loss is the mean over blocks (with `starts` > 0, over a random `starts` block starts per
row: the same mean in expectation, at a fraction of the head's cost). Metrics: `loss` (nats
per token), `bit_acc` (masked bits, or with the analog head all bits, predicted right),
`mask_frac` (masked head) or `t_mean` (analog head).

Config section `bitlm`: head ('masked' or 'analog'; absent = 'masked'), block (K),
head_width, head_layers, head_heads, head_mlp, eps (masked head only), starts (0 = every
block start), fold (absent = False: one backbone position per token).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from models import bitlm as bitlm_lib
from models import transformer as transformer_lib
from training.objectives.registry import Objective, register

KEYS = ('head', 'block', 'head_width', 'head_layers', 'head_heads', 'head_mlp', 'eps', 'starts',
        'fold')


def head_shape(model: transformer_lib.Transformer, config: ml_collections.ConfigDict
               ) -> tuple[bitlm_lib.HeadShape, float]:
  """(the head's shape and kind, eps) from config.bitlm; ValueError on a missing section or
  bad value."""
  if config is None or 'bitlm' not in config:
    raise ValueError("Objective 'bitlm' reads a `bitlm` config section (block, head_width, "
                     '...): use configs/bitlm.py.')
  s = config.bitlm
  unknown = sorted(set(s.keys()) - set(KEYS))
  if unknown:
    raise ValueError(f'Unknown bitlm config keys {unknown}; known: {sorted(KEYS)}.')
  if not 0.0 < s.eps < 1.0:
    raise ValueError(f'bitlm.eps must be in (0, 1), got {s.eps}.')
  shape = bitlm_lib.HeadShape(
      block=s.block, bits=bitlm_lib.num_bits(model.cfg.vocab_size), width=s.head_width,
      layers=s.head_layers, heads=s.head_heads, mlp=s.head_mlp, cond=model.cfg.d_model,
      kind=bitlm_lib.check_head_kind(s.get('head', 'masked')), fold=bool(s.get('fold', False)))
  if s.get('starts', 0) < 0:
    raise ValueError(f'bitlm.starts must be >= 0 (0 = every block start), got {s.starts}.')
  return shape, float(s.eps)


def block_targets(tokens_BxT1: jax.Array, block: int) -> jax.Array:
  """[B, N, K] the K tokens after each block start t = 0 .. N - 1 (N = T - K + 1) of a row of
  T + 1 tokens: out[b, t, k] = tokens[b, t + 1 + k]."""
  T = tokens_BxT1.shape[1] - 1
  if T < block:
    raise ValueError(f'bitlm: rows of {T + 1} tokens hold no block of {block} after a context '
                     'token; raise data.seq_len or lower bitlm.block.')
  N = T - block + 1
  idx = jnp.arange(N)[:, None] + 1 + jnp.arange(block)[None, :]
  return tokens_BxT1[:, idx]


def block_bound(logits_NxKxb: jax.Array, bits_NxKxb: jax.Array, masked_NxKxb: jax.Array,
                r_N: jax.Array) -> jax.Array:
  """[N] the per-token diffusion bound of each block: sum over masked bits of
  BCE(logit, bit) / r / K (see the module docstring)."""
  K = bits_NxKxb.shape[1]
  bce = bit_bce(logits_NxKxb, bits_NxKxb)
  return jnp.sum(jnp.where(masked_NxKxb, bce, 0.0), axis=(1, 2)) / r_N / K


def bit_bce(logits: jax.Array, bits: jax.Array) -> jax.Array:
  """Elementwise -log P(bit) under P(bit = 1) = sigmoid(logit), in float32 (both heads)."""
  l = logits.astype(jnp.float32)
  return jnp.where(bits == 1, -jax.nn.log_sigmoid(l), -jax.nn.log_sigmoid(-l))


def draw_noise(rng: jax.Array, shape_NxKxb: tuple[int, ...], eps: float
               ) -> tuple[jax.Array, jax.Array]:
  """(r [N] ~ U(eps, 1), masked [N, K, b]: each bit masked with probability r)."""
  k_r, k_m = jax.random.split(rng)
  N = shape_NxKxb[0]
  r = eps + (1.0 - eps) * jax.random.uniform(k_r, (N,))
  masked = jax.random.uniform(k_m, shape_NxKxb) < r[:, None, None]
  return r, masked


def draw_analog_noise(rng: jax.Array, shape_NxKxb: tuple[int, ...]
                      ) -> tuple[jax.Array, jax.Array]:
  """(t [N] ~ U(0, 1), eps [N, K, b] ~ N(0, I)): the analog head's noise per block."""
  k_t, k_e = jax.random.split(rng)
  return jax.random.uniform(k_t, shape_NxKxb[:1]), jax.random.normal(k_e, shape_NxKxb)


def analog_block_loss(logits_NxKxb: jax.Array, bits_NxKxb: jax.Array) -> jax.Array:
  """[N] the analog head's loss per block: sum over bits of BCE(logit, bit) / K."""
  return jnp.sum(bit_bce(logits_NxKxb, bits_NxKxb), axis=(1, 2)) / bits_NxKxb.shape[1]


def pick_starts(rng: jax.Array, shape_BxN: tuple[int, int], starts: int) -> jax.Array:
  """[B, starts] distinct block starts per row, uniformly at random, sorted."""
  u = jax.random.uniform(rng, shape_BxN)
  return jnp.sort(jnp.argsort(u, axis=1)[:, :starts], axis=1)


def block_loss(head_params, hidden_BxTxD: jax.Array, tokens_BxT1: jax.Array, rng: jax.Array,
               eps: float, starts: int = 0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(mean bound over the blocks of the batch, metrics) from the backbone's hidden states
  h_0 .. h_{T-1} [B, T, D] and the row tokens [B, T + 1]. starts > 0: a random `starts` of
  each row's block starts (an unbiased estimate of the mean over all of them, cheaper)."""
  targets_BxNxK = block_targets(tokens_BxT1, bitlm_lib.head_shape(head_params).block)
  return head_loss(head_params, hidden_BxTxD[:, :targets_BxNxK.shape[1]], targets_BxNxK, rng,
                   eps, starts)


def head_loss(head_params, cond_BxNxD: jax.Array, targets_BxNxK: jax.Array, rng: jax.Array,
              eps: float, starts: int = 0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(mean loss over the blocks, metrics): block n of row b has the condition cond[b, n]
  [D] and the tokens targets[b, n] [K]. starts > 0: a random `starts` of each row's N
  blocks."""
  shape = bitlm_lib.head_shape(head_params)
  K, nb = shape.block, shape.bits
  if starts and starts < targets_BxNxK.shape[1]:  # a random subset of the block starts
    rng, k_pick = jax.random.split(rng)
    pick_BxS = pick_starts(k_pick, targets_BxNxK.shape[:2], starts)
    targets_BxNxK = jnp.take_along_axis(targets_BxNxK, pick_BxS[..., None], axis=1)
    cond_BxNxD = jnp.take_along_axis(cond_BxNxD, pick_BxS[..., None], axis=1)
  B, N, _ = targets_BxNxK.shape
  bits = bitlm_lib.encode_bits(targets_BxNxK, nb).reshape(B * N, K, nb)
  cond = cond_BxNxD.reshape(B * N, -1)
  if shape.kind == 'analog':
    t, noise = draw_analog_noise(rng, (B * N, K, nb))
    logits = bitlm_lib.analog_logits(head_params, cond, bitlm_lib.noise_bits(bits, t, noise), t)
    loss = jnp.mean(analog_block_loss(logits, bits))
    bit_acc = jnp.mean((logits > 0) == (bits == 1))
    return loss, {'loss': loss, 'bit_acc': bit_acc, 't_mean': jnp.mean(t)}
  r, masked = draw_noise(rng, (B * N, K, nb), eps)
  state = jnp.where(masked, bitlm_lib.MASKED, bits)
  logits = bitlm_lib.head_logits(head_params, cond, state)
  bound = block_bound(logits, bits, masked, r)
  loss = jnp.mean(bound)
  n_masked = jnp.maximum(masked.sum(), 1)
  bit_acc = jnp.sum(masked & ((logits > 0) == (bits == 1))) / n_masked
  return loss, {'loss': loss, 'bit_acc': bit_acc, 'mask_frac': jnp.mean(masked)}


def fold_rows(tokens_BxL: jax.Array, offset_B: jax.Array, block: int,
              num_blocks: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Rows left-padded by offset[b] (0 .. K - 1) slots and cut into N blocks (default
  L // K): (ids [B, N, K] (0 at a pad slot), valid [B, N, K]); slot i of row b holds token
  i - offset[b] (valid while that is in 0 .. L - 1)."""
  B, L = tokens_BxL.shape
  N = L // block if num_blocks is None else num_blocks
  if N < 2:
    raise ValueError(f'bitlm (fold): rows of {L} tokens hold fewer than two blocks of {block}; '
                     'raise data.seq_len or lower bitlm.block.')
  return bitlm_lib.shifted_blocks(tokens_BxL, jnp.full((B,), L, jnp.int32), offset_B, block, N)


def fold_hidden(model: transformer_lib.Transformer, params, ids_BxNxK: jax.Array,
                valid_BxNxK: jax.Array) -> jax.Array:
  """[B, N, D] the folded backbone's states over blocks [B, N, K] at positions 0 .. N - 1
  (no cache); params holds 'model' and 'bitlm'."""
  x = bitlm_lib.fold_blocks(model.cfg, params['model'], params[bitlm_lib.BITLM], ids_BxNxK,
                            valid_BxNxK)
  B, N = x.shape[:2]
  pos = jnp.broadcast_to(jnp.arange(N, dtype=jnp.int32), (B, N))
  return model.apply({'params': params['model']}, None, pos,
                     inputs_embeds_BxTxD=x).last_hidden_BxTxD


def fold_loss(model: transformer_lib.Transformer, params, tokens_BxL: jax.Array,
              rng: jax.Array, eps: float, starts: int = 0
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The folded backbone's loss (module docstring) on rows [B, L]; params holds 'model' and
  'bitlm'."""
  head = params[bitlm_lib.BITLM]
  K = bitlm_lib.head_shape(head).block
  rng, k_off = jax.random.split(rng)
  offset_B = jax.random.randint(k_off, tokens_BxL.shape[:1], 0, K)
  ids, valid = fold_rows(tokens_BxL, offset_B, K)
  hidden = fold_hidden(model, params, ids[:, :-1], valid[:, :-1])
  loss, metrics = head_loss(head, hidden, ids[:, 1:], rng, eps, starts)
  return loss, {**metrics, 'pad_frac': jnp.mean(~valid)}


@register('bitlm')
def bitlm(model: transformer_lib.Transformer, config: ml_collections.ConfigDict) -> Objective:
  """Backbone + bitwise diffusion head (masked or analog) from scratch (see the module
  docstring)."""
  shape, eps = head_shape(model, config)
  starts = int(config.bitlm.get('starts', 0))

  def init_extras(rng):
    return {bitlm_lib.BITLM: bitlm_lib.init_head(shape, rng)}

  def loss_fn(params, batch, rng):
    tokens = batch['tokens']
    if shape.fold:
      return fold_loss(model, params, tokens, rng, eps, starts)
    out = model.apply({'params': params['model']}, tokens[:, :-1])
    return block_loss(params[bitlm_lib.BITLM], out.last_hidden_BxTxD, tokens, rng, eps,
                      starts)

  return Objective(loss_fn=loss_fn, init_extras=init_extras)
