"""The compiled decode loop never copies the cache (CPU, the XLA this project pins).

A copy of every layer's K/V per step costs more than the step's attention on a small model;
such copies were found in compiled programs (a layout XLA's matrix products did not take as
it lay, a one-slot write duplicated by fusion at batch 1, and the branches of a conditional
around a forward). This checks the compiled HLO of AR decoding (also with H2O eviction),
SkipDecode and a multi-token cached forward loop for instructions inside a while loop body
that copy or transpose a buffer of a cache array's shape, and that of the adaptive draft
length, of DEL, of CNTP, of CtrlDiff's boundary forward and of Fast-dLLM's refresh for such
instructions anywhere but the entry computation.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

import testlib
from testlib import small_config
from benchmarks import step_ops
from decoding import Models, SamplingConfig, registry, runner
from models import Cache, Transformer, init_params

S = 64


def _loop_bodies(hlo: str) -> dict[str, list[str]]:
  """{computation name: its lines} for every while-loop body of the compiled module."""
  comps, _ = step_ops.computations(hlo)
  bodies = set(re.findall(r'while\(.*?body=%?([\w.\-]+)', hlo))
  return {n: comps[n] for n in bodies if n in comps}


def _computations(hlo: str) -> dict[str, list[str]]:
  """{computation name: its lines} for every computation but the entry."""
  comps, entry = step_ops.computations(hlo)
  comps.pop(entry)
  return comps


def _cache_copies(hlo: str, cache: Cache, bodies: dict[str, list[str]] | None = None
                  ) -> list[str]:
  shapes = {f'f32[{",".join(map(str, x.shape))}]' for layer in cache.layers
            for x in (layer.k, layer.v)}
  bad = []
  for body in (_loop_bodies(hlo) if bodies is None else bodies).values():
    for line in body:
      m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = (\S+?)\{[\d,]*\} ([\w\-]+)\(', line)
      if not m or m.group(2) not in shapes:
        continue
      name, opcode = m.group(1), m.group(3)
      if opcode in ('copy', 'transpose') or (
          opcode == 'fusion' and name.startswith(('copy', 'transpose'))):
        bad.append(line.strip()[:160])
  return bad


@pytest.mark.parametrize('batch', [1, 3])
def test_ar_decode_loop_does_not_copy_the_cache(batch):
  hlo, cfg = _decode_hlo('ar', batch)
  assert _loop_bodies(hlo), 'no while loop found in the compiled program'
  assert not _cache_copies(hlo, Cache.init(cfg, batch, S))


@pytest.mark.parametrize('batch,tokens', [(1, 1), (1, 5), (2, 3)])
def test_cached_forward_loop_does_not_copy_the_cache(batch, tokens):
  cfg = small_config()
  model = Transformer(cfg)
  params = init_params(model, jax.random.key(0))
  cache = Cache.init(cfg, batch, S).replace(lengths=jnp.full((batch,), 20, jnp.int32))
  pos = 20 + jnp.broadcast_to(jnp.arange(tokens), (batch, tokens))

  def run(p, c, n):
    def body(_, carry):
      c, tok = carry
      out = model.apply({'params': p}, tok, pos, cache=c)
      return out.cache.replace(lengths=c.lengths), jnp.argmax(out.logits_BxTxV, -1)
    return jax.lax.fori_loop(0, n, body, (c, jnp.zeros((batch, tokens), jnp.int32)))[1]

  hlo = jax.jit(run).lower(params, cache, 4).compile().as_text()
  assert _loop_bodies(hlo)
  assert not _cache_copies(hlo, cache)


def _decode_hlo(spec: str, batch: int):
  """(compiled HLO text of decoder `spec`'s generate on a 3-layer model, its config)."""
  cfg = small_config(num_layers=3)
  model = Transformer(cfg)
  params = {'target': init_params(model, jax.random.key(0))}
  prompt = jnp.ones((batch, 8), jnp.int32)
  lengths = jnp.full((batch,), 5, jnp.int32)
  keys = jax.random.split(jax.random.key(1), batch)
  name, settings = registry.parse_spec(spec)
  hlo = runner.lower_generate(registry.build(name, settings), Models(model), params, prompt,
                              lengths, keys, max_new_tokens=16, cache_size=S, eos_id=-1,
                              pad_id=0).compile().as_text()
  return hlo, cfg


@pytest.mark.parametrize('spec,size', [('skipdecode:schedule=0/1/2', S),
                                       ('ar:h2o=16:recent=4', 16)])
@pytest.mark.parametrize('batch', [1, 3])
def test_skipping_and_evicting_decode_loops_do_not_copy_the_cache(spec, size, batch):
  """SkipDecode runs one loop per phase of constant skip (a lax.switch over the skip inside
  the step copied the cache 4 times per step); H2O writes its evicting cache in place."""
  hlo, cfg = _decode_hlo(spec, batch)
  assert _loop_bodies(hlo), 'no while loop found in the compiled program'
  assert not _cache_copies(hlo, Cache.init(cfg, batch, size))


@pytest.mark.parametrize('spec', ['prompt_lookup:gamma=2:adaptive=1:costs=1/1.1/1.2',
                                  'del:gamma=2', 'cntp'])
@pytest.mark.parametrize('batch', [1, 3])
def test_speculative_loops_that_choose_per_step_do_not_copy_the_cache(spec, batch):
  """An adaptive chain runs one loop per length, the state flowing from loop to loop (a
  `lax.switch` choosing the loop copied every layer's cache into the chosen branch at each
  change of length); DEL chooses its exit layer every step through `switch_in_place` (a
  `lax.switch` copied the cache three times a step), and so does CNTP between a trial span
  and an AR step (a `lax.cond` copied it twice). No computation but the entry copies a
  cache buffer. Chains of up to 2 drafts: the attention's probabilities [B, K, S, G * T]
  never take a cache buffer's shape [B, K, S, Dh] (G * T <= 6 < Dh = 8)."""
  hlo, cfg = _decode_hlo(spec, batch)
  assert len(re.findall(r' while\(', hlo)) >= 4  # adaptive: the outer loop, one per length
  assert not _cache_copies(hlo, Cache.init(cfg, batch, S), _computations(hlo))


def _diffusion_copies(name: str, settings: dict, extras=lambda model: {}) -> list[str]:
  """Cache copies outside the entry in the compiled generate of diffusion decoder `name` on
  the peaked one-layer model (3 rows, prompts of 8, 5 and 3 tokens, 12 new tokens);
  `extras(model)`: params beside the target's."""
  B, P, V, N = 3, 8, 64, 12
  model, params, prompt, keys = testlib.peaked_diffusion_setup(B, P, V, 60)
  dec = registry.build(name, dict(settings, mask_id=V - 1, shift=0), SamplingConfig())
  fn = jax.jit(lambda p, t, l, k: dec.generate(Models(model), p, t, l, k, max_new_tokens=N,
                                               cache_size=S, eos_id=-1, pad_id=0))
  hlo = fn.lower({'target': params, **extras(model)}, prompt,
                 jnp.asarray([8, 5, 3], jnp.int32), keys).compile().as_text()
  assert len(re.findall(r' while\(', hlo)) >= 2  # the decode loop and the conditional one
  return _cache_copies(hlo, Cache.init(model.cfg, B, S), _computations(hlo))


def test_ctrldiff_boundary_forward_does_not_copy_the_cache():
  """CtrlDiff's boundary forward (once per block, rows that finished a block) runs through
  `switch_in_place` and writes only those rows (the others' positions are padding): a
  `lax.cond` with a selection between the old and the new cache copied it twice."""
  from models import block_size as bs_lib  # pylint: disable=g-import-not-at-top
  head = lambda model: {bs_lib.HEAD: dict(bs_lib.init_params(jax.random.key(3),
                                                            model.cfg.d_model, 3))}
  assert not _diffusion_copies('ctrldiff', dict(block_causal=1, sizes='2,4,8', block_size=4),
                               head)


@pytest.mark.parametrize('cache', ['prefix', 'dual'])
def test_fast_dllm_refresh_does_not_copy_the_cache(cache):
  """Fast-dLLM's approximate caches refresh a row at its block starts: those rows run the
  full forward in a loop of its own (`switch_in_place`, run when some row refreshes), the
  others the windowed forward, each writing only its own rows into the one cache (a
  selection between the two forwards' caches copied it)."""
  # Blocks of 2: no attention probabilities [B, K, S, G * T] take a cache buffer's shape
  # [B, K, S, Dh] (G * T is 4 in the windowed forward of a block, 24 and 40 in the others).
  assert not _diffusion_copies('fast_dllm', dict(block_causal=0, block_size=2, threshold=0.6,
                                                 cache=cache))
