"""Decoders over one model and cache API, registered by name (see `decoding.registry`).

The rooms of `decoding`, imported here explicitly: each registers its decoders on import, so
this file lists every place a decoder can come from. A new decoder module is imported by its
subpackage's `__init__.py` (or here, for a top-level module).

  ar.py          the autoregressive baseline
  skipdecode.py  SkipDecode: per-step skip of the lowest layers (lossy)
  h2o.py         H2O heavy-hitter KV eviction, a cache policy (ar:h2o=..., lossy)
  kv_predict.py  KV Prediction: the prompt cache predicted by an auxiliary model (lossy)
  hamburger.py   HAMburger: several tokens per base step and per KV entry (lossy)
  speculative/   drafters, trees and verification (docs/speculative.md)
  diffusion/     masked / block diffusion decoders (docs/diffusion.md)
  latent/        latent and soft-token reasoning, routing (docs/latent.md)
"""

from decoding import ar
from decoding import diffusion
from decoding import h2o
from decoding import hamburger
from decoding import kv_predict
from decoding import latent
from decoding import registry
from decoding import skipdecode
from decoding import speculative
from decoding.base import DecodeResult, Decoder, Models, Progress
from decoding.runner import RowOutput, RunStats, run_decoder
from decoding.sampling import SamplingConfig

__all__ = ['ar', 'diffusion', 'h2o', 'hamburger', 'kv_predict', 'latent', 'registry', 'skipdecode',
           'speculative', 'DecodeResult', 'Decoder', 'Models', 'Progress', 'RowOutput',
           'RunStats', 'run_decoder', 'SamplingConfig']
