"""Timing decoders fairly: fixed batches, one ahead-of-time compile, alternating passes.

  batches = make_batches(prompts, batch_size=1, pad_id=tok.pad_id)
  fns, compile_s = compile_decoder(dec, models, params, batches, max_new=128, cache_size=S,
                                   eos_id=tok.eos_id, pad_id=tok.pad_id)
  seconds, results = timed_pass(fns, params, batches)
  summary = summarise(results, seconds, compile_s)

`measure_pair` times a method and a reference (our AR) alternately, so both see the same load
on a shared machine, and keeps each one's fastest pass. Speedups are ratios of passes of the
same process; a speedup above tau is flagged by `implausible` (a step that runs the target
over more tokens than AR's step cannot cost less than it).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from decoding import SamplingConfig, runner


def make_batches(prompts: Sequence[Sequence[int]], batch_size: int, pad_id: int, *,
                 seed: int = 0, bucket: int = 32) -> list[tuple[jax.Array, jax.Array, jax.Array]]:
  """[(prompt_BxP, prompt_len_B, row_keys_B)]: right-padded to a multiple of `bucket`; row i's
  key is fold_in(key(seed), i) as in `decoding.runner`."""
  out = []
  for start in range(0, len(prompts), batch_size):
    chunk = prompts[start:start + batch_size]
    P = int(np.ceil(max(map(len, chunk)) / bucket) * bucket)
    arr = np.full((len(chunk), P), pad_id, np.int32)
    for r, p in enumerate(chunk):
      arr[r, :len(p)] = p
    ids = jnp.arange(start, start + len(chunk))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(ids)
    out.append((jnp.asarray(arr), jnp.asarray([len(p) for p in chunk], jnp.int32), keys))
  return out


def one_shape(prompts: Sequence[Sequence[int]], bucket: int = 32) -> int:
  """The `make_batches` bucket that pads every batch of these prompts to one width (the
  longest prompt rounded up to `bucket`), so that a decoder compiles once, not once per
  width: on a GPU a speculative loop of `small` compiles in ~10-20 s."""
  return int(np.ceil(max(map(len, prompts)) / bucket) * bucket)


def compile_decoder(decoder, models, params, batches, *, max_new: int, cache_size: int,
                    eos_id: int, pad_id: int, compiler_options: dict[str, Any] | None = None
                    ) -> tuple[dict[Any, Any], float]:
  """AOT-compiles the decoder once per batch shape; returns (fns by shape, seconds).
  `compiler_options`: XLA options for these compiles only (e.g.
  {'xla_gpu_enable_command_buffer': 'FUSION,WHILE'})."""
  compiled, t0 = {}, time.perf_counter()
  for pp, (prompt, lens, keys) in zip(per_batch(params, len(batches)), batches):
    if prompt.shape not in compiled:
      compiled[prompt.shape] = runner.lower_generate(
          decoder, models, pp, prompt, lens, keys, max_new_tokens=max_new,
          cache_size=cache_size, eos_id=eos_id,
          pad_id=pad_id).compile(compiler_options or None)
  return compiled, time.perf_counter() - t0


def per_batch(params, n: int) -> list[Any]:
  """`params` for each of n batches: one tree shared by all, or a list with one per batch."""
  if isinstance(params, (list, tuple)):
    if len(params) != n:
      raise ValueError(f'{len(params)} parameter trees for {n} batches.')
    return list(params)
  return [params] * n


def timed_pass(compiled, params, batches) -> tuple[float, list[Any]]:
  """One timed pass over all batches: (seconds, results). `params`: see `per_batch`."""
  ps = per_batch(params, len(batches))
  t0 = time.perf_counter()
  results = [jax.block_until_ready(compiled[p.shape](pp, p, l, k))
             for pp, (p, l, k) in zip(ps, batches)]
  return time.perf_counter() - t0, results


def best_pass(compiled, params, batches, repeats: int) -> tuple[float, list[Any]]:
  """One untimed warm-up pass, then the fastest of `repeats` timed passes."""
  timed_pass(compiled, params, batches)
  best, results = float('inf'), None
  for _ in range(repeats):
    t, results = timed_pass(compiled, params, batches)
    best = min(best, t)
  return best, results


def loop_steps(results) -> int:
  """While-loop iterations of a pass: per batch the most target forwards of any row, less
  its prefill (the loop runs until its last row is done)."""
  return sum(int(np.max(np.asarray(r.target_forwards_B))) - 1 for r in results)


def loop_tau(ar_loop_steps: int, method_loop_steps: int) -> float:
  """AR's decode-loop iterations over a method's on the same batches: the tau that bounds
  and sets the speedup of a batched loop.

  A batch's loop runs until its slowest row is done, so at batch > 1 it is below tau (the
  rows' mean tokens per target forward): one row that accepts little holds the others. At
  batch 1 it is the decode-phase tau. The ideal speedup of a loop whose every iteration costs
  one target forward over T tokens is loop_tau * t(1) / t(T) (`cost_model.ideal_speedup`)."""
  return ar_loop_steps / max(method_loop_steps, 1)


def summarise(results, wall: float, compile_s: float) -> dict[str, Any]:
  """Tokens, forwards, tau, tokens/s and (speculative decoders) acceptance by position."""
  results = jax.device_get(results)
  tokens, gen, tfwd, ofwd = [], 0, 0, 0
  extra: dict[str, np.ndarray] = {}
  for r in results:
    for b in range(r.tokens_BxN.shape[0]):
      n = int(r.num_generated_B[b])
      tokens.append([int(t) for t in r.tokens_BxN[b, :n]])
    gen += int(r.num_generated_B.sum())
    tfwd += int(r.target_forwards_B.sum())
    ofwd += int(r.other_forwards_B.sum())
    for k, v in r.extra.items():
      extra[k] = extra.get(k, 0) + np.asarray(v).sum(0)
  out = {'tokens': tokens, 'generated': gen, 'target_forwards': tfwd, 'other_forwards': ofwd,
         'wall_s': wall, 'tokens_per_s': gen / wall, 'compile_s': compile_s,
         'tau': gen / max(tfwd, 1), 'loop_steps': loop_steps(results)}
  if 'spec_steps' in extra:
    steps = max(int(extra['spec_steps']), 1)
    out['spec_steps'] = int(extra['spec_steps'])
    out['acceptance_by_position'] = (np.asarray(extra['accepted_by_depth']) / steps).tolist()
    out['drafted_per_step'] = float(extra['drafted_tokens']) / steps
  for k in ('exit_steps', 'exit_acceptance', 'adaptive_steps'):
    if k in extra:
      out[k] = np.asarray(extra[k]).tolist()
  return out


def measure(decoder, models, params, batches, *, warmup: bool = False, **kw
            ) -> dict[str, Any]:
  """`summarise` of one timed pass of `decoder` over the batches, compiled first (with
  `warmup`, after one untimed pass). kw: `compile_decoder`'s max_new, cache_size, eos_id,
  pad_id."""
  fns, compile_s = compile_decoder(decoder, models, params, batches, **kw)
  if warmup:
    timed_pass(fns, params, batches)
  wall, results = timed_pass(fns, params, batches)
  return summarise(results, wall, compile_s)


def cache_slots(prompts: Sequence[Sequence[int]], max_new: int, margin: int = 128) -> int:
  """A cache for these prompts: the longest prompt + `max_new` + `margin` slots, rounded up
  to a multiple of 64."""
  return int(np.ceil((max(map(len, prompts)) + max_new + margin) / 64) * 64)


def ar_reference(bench, batches, **kw) -> dict[str, Any]:
  """`measure` of greedy AR with the target of workbench `bench` (the reference tokens and
  tau of a drafter table). kw: `compile_decoder`'s max_new, cache_size, eos_id, pad_id."""
  dec = bench.decoder('ar', SamplingConfig(temperature=0.0))
  models, _ = bench.models_for(dec)
  return measure(dec, models, {'target': bench.params}, batches, **kw)


TAU_KEYS = ('tau', 'acceptance_by_position', 'drafted_per_step', 'other_forwards_per_token',
            'equals_ar', 'generated', 'target_forwards', 'spec_steps')


def tau_row(r: dict[str, Any], ar_tokens, keys: Sequence[str] = TAU_KEYS) -> dict[str, Any]:
  """The columns of a greedy drafter's row in a tau table: `keys` of `summarise`'s dict `r`,
  plus equals_ar (its tokens are `ar_tokens`) and other_forwards_per_token."""
  r = dict(r, equals_ar=r['tokens'] == ar_tokens,
           other_forwards_per_token=r['other_forwards'] / r['generated'])
  return {k: r[k] for k in keys}


def measure_pair(method, ar, params, batches, *, repeats, warmup: bool = True,
                 probes: Sequence[Callable[[], float]] = ()) -> tuple[dict[str, Any], float]:
  """Times the method and AR alternately, `repeats` passes each, and keeps each one's fastest.

  `method` and `ar` are (fns, compile seconds) from `compile_decoder` (AR's params are
  params['target']). On a shared machine the other jobs' load comes and goes; alternating
  puts both decoders under the same load, and the best pass is the least disturbed one. One
  untimed warm-up pass of each comes first (`warmup=False`: the caller has run both once
  already). `probes`: zero-argument callables that time themselves and return seconds
  (e.g. `cost_model.forward_probe`), called in the same turns after each pair of passes;
  their best times are the summary's `probe_s`. Returns the method's summary and AR's best
  wall time of the same window.
  """
  (fns, compile_s), (ar_fns, _) = method, ar
  ar_params = [{'target': p['target']} for p in per_batch(params, len(batches))]
  times, ar_times, results = [], [], None
  probe_s = [float('inf')] * len(probes)
  if warmup:  # the first call of a compiled function is slower
    timed_pass(fns, params, batches)
    timed_pass(ar_fns, ar_params, batches)
  for _ in range(repeats):
    ar_times.append(timed_pass(ar_fns, ar_params, batches)[0])
    t, results = timed_pass(fns, params, batches)
    times.append(t)
    probe_s = [min(best, probe()) for best, probe in zip(probe_s, probes)]
  out = summarise(results, min(times), compile_s)
  out['wall_s_all'] = times
  out['ar_wall_s_all'] = ar_times
  if probes:
    out['probe_s'] = probe_s
  return out, min(ar_times)


def alternate(progs, batches, *, repeats: int, probes: Sequence[Callable[[], float]] = ()
              ) -> tuple[list[float], list[Any]]:
  """Best wall time and its results for each (compiled fns, params) program, their passes
  alternated `repeats` times after one warm-up pass each (so all see the same load).
  `probes`: zero-argument callables that time themselves and return seconds (warmed up by
  the caller), called in the same turns after the programs; their best times follow the
  programs' in the returned list (their results are None)."""
  n = len(progs)
  best, results = [float('inf')] * (n + len(probes)), [None] * (n + len(probes))
  for fns, pp in progs:  # warm-up: the first call of a compiled function is slower
    timed_pass(fns, pp, batches)
  for _ in range(repeats):
    for i, (fns, pp) in enumerate(progs):
      t, res = timed_pass(fns, pp, batches)
      if t < best[i]:
        best[i], results[i] = t, res
    for i, probe in enumerate(probes):
      best[n + i] = min(best[n + i], probe())
  return best, results


def round_times(progs, batches, repeats: int) -> tuple[list[np.ndarray], list]:
  """Wall times [repeats] of one pass of each (compiled fns, params) program, the programs
  run in turn in every round (after one warm-up pass each), and each one's last results. A
  speedup is then read per round (both passes under the same load) and its median kept: on a
  shared machine the load moves between rounds more than within one."""
  for fns, pp in progs:
    timed_pass(fns, pp, batches)
  times = [[] for _ in progs]
  results = [None] * len(progs)
  for _ in range(repeats):
    for i, (fns, pp) in enumerate(progs):
      t, results[i] = timed_pass(fns, pp, batches)
      times[i].append(t)
  return [np.asarray(t) for t in times], results


def measure_decode_pair(method_n, method_1, ar_n, ar_1, params, batches, *, repeats,
                        probes: Sequence[Callable[[], float]] = ()) -> dict[str, Any]:
  """Decode-phase speed of a method against AR, prefill excluded.

  Each argument pair is (fns, compile seconds) from `compile_decoder` for N new tokens and for
  one (prefill plus the first token). Passes of the four programs alternate `repeats` times
  after a warm-up, each keeps its fastest, and the decode time is t(N) - t(1): the speedup
  `ar_decode_s / decode_s` compares the same tokens after the same prefill. Returns the
  method's summary of the N-token run with decode_s, ar_decode_s, the decode-phase tau
  (tokens after the first over target forwards after the prefill), the speedup, `ar_step_s`
  (one AR decode-loop iteration in this window: ar_decode_s / its iterations), `loop_tau`
  (AR's decode-loop iterations over the method's, see `loop_tau`) and `probe_s`: the best
  time of each of `probes` (see `alternate`), timed in the same turns.
  """
  ar_params = [{'target': p['target']} for p in per_batch(params, len(batches))]
  best, results = alternate([(method_n[0], params), (method_1[0], params),
                             (ar_n[0], ar_params), (ar_1[0], ar_params)], batches,
                            repeats=repeats, probes=probes)
  out = summarise(results[0], best[0], method_n[1])
  rows = sum(int(p.shape[0]) for p, _, _ in batches)
  out['decode_s'] = best[0] - best[1]
  out['ar_decode_s'] = best[2] - best[3]
  out['decode_tau'] = (out['generated'] - rows) / max(out['target_forwards'] - rows, 1)
  out['speedup'] = out['ar_decode_s'] / max(out['decode_s'], 1e-12)
  out['ar_tokens'] = summarise(results[2], best[2], ar_n[1])['tokens']
  ar_steps = loop_steps(results[2]) - loop_steps(results[3])
  out['ar_step_s'] = out['ar_decode_s'] / max(ar_steps, 1)
  out['loop_tau'] = loop_tau(ar_steps, loop_steps(results[0]) - loop_steps(results[1]))
  out['probe_s'] = best[4:]
  return out


def agreement(ref_rows, rows) -> tuple[float, float]:
  """(fraction of positions where `rows` equal `ref_rows`, counted over the longer of each
  pair; mean common-prefix length): how close a lossy decoder's output stays to a reference
  decoder's (rows: `runner.RowOutput`s or anything with `.tokens`)."""
  same = total = 0
  prefix = []
  for a, r in zip(ref_rows, rows):
    n = min(len(a.tokens), len(r.tokens))
    eq = [x == y for x, y in zip(a.tokens[:n], r.tokens[:n])]
    same += sum(eq)
    total += max(len(a.tokens), len(r.tokens))
    prefix.append(eq.index(False) if False in eq else n)
  return same / max(total, 1), float(np.mean(prefix))


def implausible(row: dict[str, Any]) -> bool:
  """A speedup above tau, or above `loop_tau` where the row has it (see
  `common.speedup_above_tau`): load on the machine, not the method; tables flag such rows
  with '(!)'."""
  return common.speedup_above_tau(row.get('speedup', 0),
                                  min(row['tau'], row.get('loop_tau', row['tau'])))
