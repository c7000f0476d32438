"""BitLM decoding (models/bitlm.py; Zhuang et al. 2026): `bitlm`.

Prefill runs the prompt through the causal backbone into its KV cache; the hidden state at
each row's last prompt token conditions the head. Each loop step then:

  1. the head fills the next block's K x b bits in `steps` denoising calls
     (`models.bitlm.denoise_block`). A masked head (the default): per step the most
     confident masked bits are committed; greedy = logit > 0, or
     Bernoulli(sigmoid(logit / temperature)) under sampling. An analog head (the paper's):
     DDIM from Gaussian noise drawn from the block's key, over `steps` noise levels from 1
     to 0, bits = signs of the last clean estimate; temperature is DDIM's eta (0:
     deterministic updates, the output still a function of the starting noise, i.e. of the
     row key; 1: ancestral DDPM; above 1 refused). Either way codes >= V are replaced by the
     valid id the last bit logits like best (`valid_ids`), so no id >= V is ever emitted;
  2. the block is cut at the first EOS and at the row's budget and committed;
  3. the backbone runs once over the committed tokens (positions after the row's last token,
     K entries into the cache) and its hidden state at the block's last token conditions the
     next block (a row that has just finished writes nothing).

Backbone forwards counted: one per block (the prefill's conditions the first block, each
step's the next; the last step's is not needed and not counted), so tokens per backbone
forward = K but for a short last block or an EOS, where `ar` counts one per token (its
prefill included). Head calls: `steps` per block (`other_forwards`). KV entries per token: one per layer, as `ar`.

With a folded head (`HeadShape.fold`: one backbone position per block, models/bitlm.py) the
prefill reads each prompt as ceil(P / K) folded blocks aligned to its end
(`models.bitlm.prompt_blocks`) and step 3 reads the committed block as one folded position:
one KV entry per block, 1/K per token, and a cache of ceil(cache_size / K) + 1 slots. Every
block the backbone reads while a row goes on is full (a short block ends the row).
Lossy: a different model from an AR model, no AR reference. Greedy decoding is deterministic
and batch-invariant (with an analog head, given the row keys); with sampling (and the analog
head's starting noise), row b's block n draws from fold_in(row key b, n).

Settings: `steps` head calls per block (masked: 1 .. K x b; analog: >= 1; 0 = b, i.e. K bits
per call on average for the masked head). The head's kind is read from its params.
Sampling: temperature only (top-k / top-p / min-p have no meaning over independent bits and
are refused).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp

from decoding import base
from decoding import registry
from models import bitlm as bitlm_lib
from models import cache as cache_lib

_SALT = 0xB17


@flax.struct.dataclass
class BitLMState:
  """cache: the backbone's KV cache (lengths = prompt + generated tokens);
  cond_BxD: the backbone's hidden state at each row's newest token (the next block's
  condition); progress: tokens, counts, done flags and the per-step histogram."""
  cache: cache_lib.Cache
  cond_BxD: jax.Array
  progress: base.Progress


def last_hidden(hidden_BxTxD: jax.Array, index_B: jax.Array) -> jax.Array:
  """[B, D] hidden_BxTxD[b, index[b]]."""
  return jnp.take_along_axis(hidden_BxTxD, index_B[:, None, None], axis=1)[:, 0]


@registry.register
@dataclasses.dataclass(frozen=True)
class BitLMDecoder(base.Decoder):
  """BitLM: a diffusion head fills the bits of K tokens per backbone forward (lossy; needs a
  run of configs/bitlm.py)."""
  name: ClassVar[str] = 'bitlm'
  family: ClassVar[str] = 'diffusion'
  lossless: ClassVar[bool] = False
  model_kinds: ClassVar[tuple[str, ...]] = ('bitlm',)
  model_heads: ClassVar[tuple[str, ...]] = (bitlm_lib.BITLM,)
  steps: int = 0  # head calls per block; 0 = bits per token

  def __post_init__(self):
    if self.steps < 0:
      raise ValueError(f'bitlm: steps must be >= 0 (0 = bits per token), got {self.steps}.')
    s = self.sampling
    if s.top_k or s.top_p < 1.0 or s.min_p:
      raise ValueError('bitlm samples each bit from its own Bernoulli: top_k, top_p and min_p '
                       'do not apply (use temperature only).')

  def block_steps(self, shape: bitlm_lib.HeadShape) -> int:
    # ValueError when out of range for the head's kind (or, analog, temperature > 1)
    return bitlm_lib.check_steps(shape, self.steps or shape.bits,
                                 float(self.sampling.temperature))

  def generate(self, models: base.Models, params: dict[str, Any], prompt_BxP: jax.Array,
               prompt_len_B: jax.Array, row_keys_B: jax.Array, *, max_new_tokens: int,
               cache_size: int, eos_id: int, pad_id: int) -> base.DecodeResult:
    if bitlm_lib.BITLM not in params:
      raise ValueError("Decoder 'bitlm' needs the run's bitwise diffusion head "
                       "(params['bitlm']): train with `python train.py "
                       "--config=configs/bitlm.py:tiny --workdir=RUN`.")
    target, p, hp = models.target, params['target'], params[bitlm_lib.BITLM]
    shape = bitlm_lib.head_shape(hp)
    V = target.cfg.vocab_size
    if bitlm_lib.num_bits(V) != shape.bits:
      raise ValueError(f'bitlm: the head codes {shape.bits} bits per token but the model\'s '
                       f'vocabulary ({V}) needs {bitlm_lib.num_bits(V)}.')
    steps = self.block_steps(shape)
    B, K, N = prompt_BxP.shape[0], shape.block, max_new_tokens
    temperature = float(self.sampling.temperature)
    if shape.fold:  # one position per block: prompts as blocks aligned to their ends
      cache = cache_lib.Cache.init(target.cfg, B, -(-cache_size // K) + 1)
      blocks, valid, nblocks_B = bitlm_lib.prompt_blocks(prompt_BxP, prompt_len_B, K)
      j_1xM = jnp.arange(blocks.shape[1], dtype=jnp.int32)[None]
      out = target.apply({'params': p}, None, jnp.where(j_1xM < nblocks_B[:, None], j_1xM, -1),
                         cache=cache,
                         inputs_embeds_BxTxD=bitlm_lib.fold_blocks(target.cfg, p, hp, blocks,
                                                                   valid))
      cache, cond = out.cache, last_hidden(out.last_hidden_BxTxD, nblocks_B - 1)
    else:
      cache = cache_lib.Cache.init(target.cfg, B, cache_size)
      _, cache, out = base.prefill(target, p, prompt_BxP, prompt_len_B, cache)
      cond = last_hidden(out.last_hidden_BxTxD, jnp.maximum(prompt_len_B - 1, 0))
    state = BitLMState(cache=cache, cond_BxD=cond, progress=base.Progress.start(
        B, N, pad_id=pad_id, hist_size=K + 1))
    k_1xK = jnp.arange(K, dtype=jnp.int32)[None]

    def cond_fn(s: BitLMState) -> jax.Array:
      return ~jnp.all(s.progress.done_B)

    def step_fn(s: BitLMState) -> BitLMState:
      active = s.progress.active_B
      num = s.progress.num_generated_B
      keys = jax.vmap(lambda k, n: jax.random.fold_in(jax.random.fold_in(k, _SALT), n))(
          row_keys_B, num)
      block_BxK, _ = bitlm_lib.denoise_block(hp, s.cond_BxD, steps, V,
                                             temperature=temperature, keys_B=keys)
      count, ended = base.truncate_at_eos(block_BxK, jnp.full((B,), K, jnp.int32), N - num,
                                          eos_id)
      count = jnp.where(active, count, 0)
      block_BxK = jnp.where(k_1xK < count[:, None], block_BxK, pad_id)
      # One backbone forward per block: the prefill's for the first, this step's for the next.
      prog = s.progress.count(active, other_B=steps, committed_B=count)
      prog = prog.commit(block_BxK, count, ended & active, N)
      # The backbone reads the committed tokens (rows still going only; the others write no
      # cache entry) and conditions the next block on its newest one.
      go = prog.active_B
      if shape.fold:  # the block as one position (a row that goes on committed K tokens)
        pos_Bx1 = jnp.where(go, nblocks_B + num // K, -1)[:, None]
        x_Bx1xD = bitlm_lib.fold_blocks(target.cfg, p, hp, block_BxK[:, None],
                                        jnp.ones((B, 1, K), bool))
        fwd = target.apply({'params': p}, None, pos_Bx1, cache=s.cache,
                           inputs_embeds_BxTxD=x_Bx1xD)
        newest_B = jnp.zeros((B,), jnp.int32)
      else:
        pos_BxK = prompt_len_B[:, None] + num[:, None] + k_1xK
        pos_BxK = jnp.where(go[:, None] & (k_1xK < count[:, None]), pos_BxK, -1)
        fwd = target.apply({'params': p}, block_BxK, pos_BxK, cache=s.cache)
        newest_B = jnp.maximum(count - 1, 0)
      cond = jnp.where(go[:, None], last_hidden(fwd.last_hidden_BxTxD, newest_B), s.cond_BxD)
      return BitLMState(cache=fwd.cache, cond_BxD=cond, progress=prog)

    state = jax.lax.while_loop(cond_fn, step_fn, state)
    return state.progress.result()
