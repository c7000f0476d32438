"""Host-side limits: prompts cut to the model's maximum length (BOS kept, a warning), a
--max_new_tokens beyond it refused, a cache beyond free memory refused before allocation."""

import pytest

from decoding import limits
from testlib import small_config


def test_long_prompts_are_cut_from_the_left_keeping_the_bos_with_a_warning():
  warnings = []
  prompts = [[1] + list(range(100, 140)), [1, 5, 6], list(range(200, 250))]
  out = limits.fit_prompts(prompts, max_new_tokens=20, max_len=32, prefix=[1],
                           warn=warnings.append)
  assert out[0] == [1] + list(range(129, 140)) and len(out[0]) == 12
  assert out[1] == [1, 5, 6]
  assert out[2] == list(range(238, 250))  # no prefix to keep
  assert len(warnings) == 2 and warnings[0].startswith('warning: prompt 0 has 41 tokens')
  assert 'kept its last 11 tokens after the BOS' in warnings[0]


@pytest.mark.parametrize('max_new', [32, 33, 10**8, 0, -1])
def test_max_new_tokens_without_room_is_refused(max_new):
  with pytest.raises(ValueError, match='max_new_tokens'):
    limits.fit_prompts([[1, 2]], max_new_tokens=max_new, max_len=32)


def test_cache_beyond_free_memory_is_refused(monkeypatch):
  cfg = small_config()  # 2 layers x (K, V) x 2 kv heads x 8 x 4 bytes: 256 per slot and row
  kv = 2 * 100 * 256
  assert kv <= limits.cache_bytes(cfg, 2, 100) < 1.1 * kv  # plus the slot bookkeeping
  monkeypatch.setattr(limits, 'available_bytes', lambda device=None: 2**20)
  limits.check_memory(cfg, batch_size=2, cache_size=1000, prompt_len=8)
  with pytest.raises(ValueError, match=r'needs about 19\.\d MiB per device but 1\.0 MiB is free'):
    limits.check_memory(cfg, batch_size=8, cache_size=10**4, prompt_len=8)
  limits.check_memory(cfg, batch_size=8, cache_size=10**4, prompt_len=8, num_devices=64)
