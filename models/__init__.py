"""Flax modules: the Transformer, its cache, masks and sharding rules; the model kind."""

from models.cache import Cache, KVCache
from models.config import ModelConfig
from models.kind import ModelKind
from models.masks import BlockCausal, local_to_cache_mask, tree_mask
from models.transformer import ModelOutput, Transformer, init_params, logical_axes

__all__ = ['Cache', 'KVCache', 'ModelConfig', 'ModelKind', 'BlockCausal', 'local_to_cache_mask',
           'tree_mask', 'ModelOutput', 'Transformer', 'init_params', 'logical_axes']
