"""PIPO decoding (Pair-In, Pair-Out; Tan et al. 2026): `pipo`. Lossy.

The run holds a base fine-tuned to read chunk inputs plus params['pipo'] (models/pipo.py:
compressor, MTP head, confidence head; trained by configs/pipo.py). Each step is one base
forward over one position, the chunk committed by the previous step:

  1. h, logits1 = base(compress(chunk)) at the next chunk position (the cache holds the
     prompt's chunks and every earlier step's)
  2. t1 ~ logits1; t2 ~ MTP(h, t1); c = sigmoid(confidence(h, t1))
  3. c >= threshold: commit t1 t2, the next chunk is (t1, t2); else commit t1 alone, the next
     chunk is (t1, hole)

No verifier forward checks t2: the confidence head decides, so the output is not the base's
own (lossy; the benchmark reports task accuracy next to speed). threshold = +inf never
accepts (one token per forward: the PIPO model's own AR decoding, tested against a
full-forward reference); -inf accepts every pair (two tokens per forward). The prompt is read
as pairs (`pair_prompt`, ceil(P / 2) positions: the paper's faster first token) or one token
per position; with the untrained initialisation (a single-token chunk is the base's own
embedding), pair_prompt=False and threshold=+inf decode exactly as `ar` on the base (tested).

Statistics: target forwards = prefill + steps; other forwards = MTP + confidence head
evaluations (one per step); the step histogram counts steps that committed 0 / 1 / 2 tokens;
extra['positions_B'] = cache positions used (prompt chunks + steps).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp

from decoding import base
from decoding import registry
from decoding import sampling as sampling_lib
from models import cache as cache_lib
from models import kind as kind_lib
from models import pipo as pipo_lib


@flax.struct.dataclass
class PIPOState:
  """Loop state of `PIPODecoder`.

  cache: the base's KV cache over chunk positions 0 .. pos_B - 1.
  first_B, second_B, has_second_B: the chunk the next step feeds (the newest commit).
  pos_B: that chunk's position (= chunks in the cache).
  progress: tokens, counts, histogram of tokens per step (`base.Progress`).
  """
  cache: cache_lib.Cache
  first_B: jax.Array
  second_B: jax.Array
  has_second_B: jax.Array
  pos_B: jax.Array
  progress: base.Progress


@registry.register
@dataclasses.dataclass(frozen=True)
class PIPODecoder(base.Decoder):
  """Pair-In, Pair-Out decoding with a confidence head in place of a verifier (see the module
  docstring; lossy)."""
  name: ClassVar[str] = 'pipo'
  family: ClassVar[str] = 'latent'
  lossless: ClassVar[bool] = False
  model_heads: ClassVar[tuple[str, ...]] = (pipo_lib.PIPO,)
  threshold: float = 0.5   # accept the pair when sigmoid(confidence) >= threshold
  pair_prompt: bool = True  # read the prompt two tokens per position

  def cheaper_steps(self) -> bool:
    """Yes: the prompt runs over half the positions and every step attends to one key per
    chunk, not per token, so tokens/s may exceed AR's by more than tau."""
    return True

  def __post_init__(self):
    if math.isnan(self.threshold):
      raise ValueError('pipo: threshold must be a number in [0, 1], or +inf (never accept) / '
                       '-inf (always accept); got nan.')

  def generate(self, models: base.Models, params: dict[str, Any], prompt_BxP: jax.Array,
               prompt_len_B: jax.Array, row_keys_B: jax.Array, *, max_new_tokens: int,
               cache_size: int, eos_id: int, pad_id: int) -> base.DecodeResult:
    if pipo_lib.PIPO not in params:
      raise ValueError("Decoder 'pipo' needs PIPO's compressor and heads beside the target: "
                       f'{kind_lib.train_heads_hint((pipo_lib.PIPO,))}.')
    target, p, pp = models.target, params['target'], params[pipo_lib.PIPO]
    cfg = target.cfg
    pipo_lib.check_model(cfg)
    B, N = prompt_BxP.shape[0], max_new_tokens

    def propose(logits1_BxV, h_BxD, num_B, active_B):
      """(tokens [B, 2], committed count [B], hit EOS [B]) after one base output."""
      tok_B = prompt_len_B + num_B  # absolute index of t1
      t1 = sampling_lib.sample(sampling_lib.token_keys(row_keys_B, tok_B), logits1_BxV,
                               self.sampling)
      logits2, conf = pipo_lib.extra_token(cfg, p, pp, h_BxD[:, None], t1[:, None])
      t2 = sampling_lib.sample(sampling_lib.token_keys(row_keys_B, tok_B + 1), logits2[:, 0],
                               self.sampling)
      accept_B = jax.nn.sigmoid(conf[:, 0]) >= self.threshold
      new_Bx2 = jnp.stack([t1, t2], 1)
      count_B, eos_B = base.truncate_at_eos(new_Bx2, 1 + accept_B.astype(jnp.int32),
                                            N - num_B, eos_id)
      return new_Bx2, jnp.where(active_B, count_B, 0), eos_B & active_B

    def advance(s_progress, new_Bx2, count_B, eos_B, active_B):
      return s_progress.count(active_B, other_B=1, committed_B=count_B).commit(
          jnp.where(active_B[:, None], new_Bx2, pad_id), count_B, eos_B, N)

    first, second, has2, pos, chunks_B = pipo_lib.prompt_chunks(prompt_BxP, prompt_len_B,
                                                                self.pair_prompt)
    cache = cache_lib.Cache.init(cfg, B, cache_size)
    out = pipo_lib.forward(target, p, pp, first, second, has2, pos, cache=cache)
    last = jnp.maximum(chunks_B - 1, 0)[:, None, None]
    logits1 = jnp.take_along_axis(out.logits_BxTxV, last, 1)[:, 0]
    h = jnp.take_along_axis(out.last_hidden_BxTxD, last, 1)[:, 0]
    progress = base.Progress.start(B, N, pad_id=pad_id, eos_id=eos_id, hist_size=3)
    all_B = jnp.ones((B,), bool)
    new, count, eos = propose(logits1, h, progress.num_generated_B, all_B)
    state = PIPOState(cache=out.cache, first_B=new[:, 0], second_B=new[:, 1],
                      has_second_B=count == 2, pos_B=chunks_B,
                      progress=advance(progress, new, count, eos, all_B))

    def cond_fn(s: PIPOState) -> jax.Array:
      return ~jnp.all(s.progress.done_B)

    def step_fn(s: PIPOState) -> PIPOState:
      active_B = s.progress.active_B
      pos_Bx1 = jnp.where(active_B, s.pos_B, -1)[:, None]
      o = pipo_lib.forward(target, p, pp, s.first_B[:, None], s.second_B[:, None],
                           s.has_second_B[:, None], pos_Bx1, cache=s.cache)
      new, count, eos = propose(o.logits_BxTxV[:, 0], o.last_hidden_BxTxD[:, 0],
                                s.progress.num_generated_B, active_B)
      keep = lambda a, b: jnp.where(active_B, a, b)
      return PIPOState(cache=o.cache, first_B=keep(new[:, 0], s.first_B),
                       second_B=keep(new[:, 1], s.second_B),
                       has_second_B=keep(count == 2, s.has_second_B),
                       pos_B=s.pos_B + active_B.astype(jnp.int32),
                       progress=advance(s.progress, new, count, eos, active_B))

    state = jax.lax.while_loop(cond_fn, step_fn, state)
    return state.progress.result({'positions_B': state.pos_B})
