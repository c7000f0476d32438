"""Limits checked on the host before decoding starts: the model's maximum length, and the
memory the cache needs.

  prompts = limits.fit_prompts(prompts, max_new_tokens=N, max_len=cfg.max_seq_len,
                               prefix=tok.prompt_prefix, warn=print_to_stderr)
  limits.check_memory(cfg, batch_size=B, cache_size=S, prompt_len=P)

Policy (README, "Sampling and decoders"): `max_new_tokens` must leave room for at least one
prompt token within `max_seq_len`, otherwise it is refused; a prompt that does not fit with
`max_new_tokens` after it is cut from the left (its leading BOS/prefix kept) with a warning.
A cache that cannot fit in the memory of the device is refused before anything is allocated.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import jax

from models import cache as cache_lib
from models import config as config_lib

# Refuse when the estimate exceeds this share of the free memory: decoders allocate more
# than the cache and the prefill logits (draft caches, tree logits, the compiled program).
MEMORY_SHARE = 0.9


def fit_prompts(prompts: Sequence[Sequence[int]], *, max_new_tokens: int, max_len: int,
                prefix: Sequence[int] = (), warn: Callable[[str], None] = print
                ) -> list[list[int]]:
  """Each prompt cut from the left so that prompt + max_new_tokens <= max_len.

  A prompt that starts with `prefix` (the tokenizer's BOS convention) keeps it. Raises
  ValueError when max_new_tokens alone leaves no room (>= max_len).
  """
  if max_new_tokens < 1:
    raise ValueError(f'--max_new_tokens must be >= 1, got {max_new_tokens}.')
  if max_new_tokens >= max_len:
    raise ValueError(f'--max_new_tokens={max_new_tokens} does not fit the model\'s maximum '
                     f'length of {max_len} positions with a prompt; use at most '
                     f'{max_len - 1}.')
  room = max_len - max_new_tokens
  fitted = []
  for i, p in enumerate(prompts):
    p = list(p)
    if len(p) > room:
      head = list(prefix) if prefix and p[:len(prefix)] == list(prefix) else []
      head = head[:room - 1]
      kept = p[len(p) - (room - len(head)):]
      warn(f'warning: prompt {i} has {len(p)} tokens but the model\'s maximum length is '
           f'{max_len} and --max_new_tokens={max_new_tokens}: kept its last {len(kept)} '
           f'tokens{" after the BOS" if head else ""}.')
      p = head + kept
    fitted.append(p)
  return fitted


def cache_bytes(cfg: config_lib.ModelConfig, batch_size: int, cache_size: int) -> int:
  """Bytes of the model's decoding cache (computed from shapes; nothing is allocated)."""
  shapes = jax.eval_shape(lambda: cache_lib.Cache.init(cfg, batch_size, cache_size))
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))


def available_bytes(device: jax.Device | None = None) -> int | None:
  """Free memory of `device` (an accelerator's allocator limit minus its use; the host's
  MemAvailable for CPU), or None when unknown."""
  device = device or jax.devices()[0]
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats and stats.get('bytes_limit'):
    return int(stats['bytes_limit']) - int(stats.get('bytes_in_use', 0))
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  except (ValueError, OSError, AttributeError):
    return None


def check_memory(cfg: config_lib.ModelConfig, *, batch_size: int, cache_size: int,
                 prompt_len: int, num_devices: int = 1) -> None:
  """ValueError before allocation when the cache plus the prefill logits would not fit in
  MEMORY_SHARE of the free memory of a device (the batch split over `num_devices`)."""
  free = available_bytes()
  if free is None:
    return
  need = (cache_bytes(cfg, batch_size, cache_size)
          + batch_size * prompt_len * cfg.vocab_size * 4) / max(num_devices, 1)
  if need > MEMORY_SHARE * free:
    raise ValueError(f'Decoding {batch_size} prompts with a cache of {cache_size} slots needs '
                     f'about {_size(need)} per device but {_size(free)} is free: lower '
                     '--max_new_tokens, --batch_size or --cache_size.')


def _size(n: float) -> str:
  return f'{n / 2**30:.1f} GiB' if n >= 2**30 else f'{n / 2**20:.1f} MiB'

