"""Decoders over one model and cache API, registered by name (see `decoding.registry`)."""

from decoding import ar  # noqa: F401  (registers 'ar')
from decoding import registry
from decoding.base import DecodeResult, Decoder, Models
from decoding.runner import RowOutput, RunStats, run_decoder
from decoding.sampling import SamplingConfig

__all__ = ['registry', 'DecodeResult', 'Decoder', 'Models', 'RowOutput', 'RunStats',
           'run_decoder', 'SamplingConfig']
