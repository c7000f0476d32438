"""Flax modules: the Transformer, its cache, masks and sharding rules."""

from models.cache import Cache, KVCache
from models.config import ModelConfig
from models.masks import BlockCausal, local_to_cache_mask, tree_mask
from models.transformer import ModelOutput, Transformer, init_params, logical_axes

__all__ = ['Cache', 'KVCache', 'ModelConfig', 'BlockCausal', 'local_to_cache_mask', 'tree_mask',
           'ModelOutput', 'Transformer', 'init_params', 'logical_axes']
