"""KV Prediction decoding (Horton et al. 2024): `kv_predict`.

The prompt runs through the auxiliary model of `models/kv_predict.py` (the base's first A
layers, trained beside the frozen base by configs/kv_predict.py), whose predictor writes the
base's keys and values for every prompt token but the last into the cache. The base then runs
the last prompt token over that cache (its first token) and decodes exactly as `ar` does.

Lossy: the base attends to predicted, not computed, keys and values of the prompt. The base's
own entries (every generated token's) are exact, and with a predictor that returns the base's
keys and values (A = all layers, untrained) the output is `ar`'s token for token.

Time to first token: A of the base's L layers over the prompt, plus the predictor (two
D x K·Dh maps per layer), plus one base step, against the base's L layers over the prompt
(`benchmarks/kv_predict.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from decoding import ar
from decoding import base
from decoding import registry
from models import cache as cache_lib
from models import kind as kind_lib
from models import kv_predict as kvp_lib


@registry.register
@dataclasses.dataclass(frozen=True)
class KVPredictDecoder(ar.ARDecoder):
  """AR decoding from a predicted prompt cache (see the module docstring; lossy)."""
  name: ClassVar[str] = 'kv_predict'
  lossless: ClassVar[bool] = False
  model_heads: ClassVar[tuple[str, ...]] = (kvp_lib.KV_PREDICT,)

  def __post_init__(self):
    if self.h2o or self.recent:
      raise ValueError('kv_predict does not combine with h2o: the evicting cache prefills the '
                       'prompt through the base model.')

  def is_lossless(self) -> bool:
    return False

  def cheaper_steps(self) -> bool:
    return False  # the prompt is cheaper, not the steps

  def prefill(self, models: base.Models, params: dict[str, Any], prompt_BxP: jax.Array,
              prompt_len_B: jax.Array, cache_size: int) -> tuple[jax.Array, cache_lib.Cache]:
    if kvp_lib.KV_PREDICT not in params:
      raise ValueError('Decoder \'kv_predict\' needs a KV predictor beside the target: '
                       f'{kind_lib.train_heads_hint((kvp_lib.KV_PREDICT,))}.')
    target, p, kvp = models.target, params['target'], params[kvp_lib.KV_PREDICT]
    positions_BxP = base.prompt_positions(prompt_BxP, prompt_len_B)
    kv = kvp_lib.predict_kv(target.cfg, p, kvp, prompt_BxP, positions_BxP)
    cache = cache_lib.Cache.init(target.cfg, prompt_BxP.shape[0], cache_size)
    last_B = jnp.maximum(prompt_len_B - 1, 0)
    cache = kvp_lib.write_cache(cache, kv, positions_BxP, last_B)
    last_tok_B = jnp.take_along_axis(prompt_BxP, last_B[:, None], axis=1)[:, 0]
    out = target.apply({'params': p}, last_tok_B[:, None], last_B[:, None], cache=cache)
    return out.logits_BxTxV[:, 0], out.cache
