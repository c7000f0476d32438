"""Decoders over one model and cache API, registered by name (see `decoding.registry`).

Every module and subpackage of `decoding` is imported here, so a decoder registers itself by
existing: add a module with a `@registry.register` class.
"""

import importlib
import pkgutil

from decoding import registry
from decoding.base import DecodeResult, Decoder, Models
from decoding.runner import RowOutput, RunStats, run_decoder
from decoding.sampling import SamplingConfig

for _m in pkgutil.walk_packages(__path__, prefix=f'{__name__}.'):
  importlib.import_module(_m.name)

__all__ = ['registry', 'DecodeResult', 'Decoder', 'Models', 'RowOutput', 'RunStats',
           'run_decoder', 'SamplingConfig']
