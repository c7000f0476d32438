"""Where a decoding step's time goes: target forward, drafter models, everything else.

  python -m benchmarks.step_cost --workdir=runs/tiny                  # the README's model
  python -m benchmarks.step_cost --preset=mem --batches=1             # memory-bound, random

For each decoder and batch size, on the same prompts and in one process:
  step       measured time of one loop iteration: (time to generate N tokens - time to
             generate 1) / (loop iterations between them), best of `--repeats` passes;
  target     the forward-cost curve at the step's token count (benchmarks.cost_model:
             a cached forward over T tokens timed on its own);
  drafter    the drafter's models: the step with them replaced by no-op models
             (`cost_model.NoopModel`) subtracted from the full step (0 without a draft
             model; self-speculative drafting is the target's own layers, counted in
             'target model');
  other      the step with every model a no-op: drafting logic, tree building, masks,
             verification, cache gather/commit, bookkeeping and loop overhead.
  target model  the full step minus the step with only the target a no-op (every target
             call of the step, drafting layers of self-speculative decoders included).
`target + drafter + other` should equal `step` (checked: within 10% for decoders with one
target forward per step); `other / step` is the overhead share (goal <= 25% on tiny, <= 10%
on a memory-bound target). Also tau, the speedup over AR in the same run, and the ideal
speedup tau * t_AR / t_fwd(T) the forward-cost curve allows. Writes
benchmarks/results/step_cost_<name>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Sequence

from benchmarks import common
from benchmarks import cost_model
from benchmarks import harness
from decoding import Models, SamplingConfig, registry

DEFAULT_DECODERS = 'ar,prompt_lookup,token_recycling,jacobi,lookahead,layerskip,del'
SUM_TOLERANCE = 0.10


def step_tokens(decoder, models: Models) -> int:
  """Tokens of the step's target forward: 1 for AR, the tree size for speculative ones."""
  if decoder.name == 'ar':
    return 1
  make = getattr(decoder, 'make_drafter', None)
  if make is None:
    raise ValueError(f'No step size known for decoder {decoder.name!r}.')
  return make().resolve(models).max_nodes


def step_time(decoder, models, params, batches, *, max_new: int, cache_size: int,
              eos_id: int, pad_id: int, repeats: int) -> tuple[float, dict[str, Any]]:
  """(seconds per loop iteration, summary of the N-token run)."""
  kw = dict(cache_size=cache_size, eos_id=eos_id, pad_id=pad_id)
  fn_n, compile_s = harness.compile_decoder(decoder, models, params, batches,
                                            max_new=max_new, **kw)
  fn_1, _ = harness.compile_decoder(decoder, models, params, batches, max_new=1, **kw)
  t_n, res_n = harness.best_pass(fn_n, params, batches, repeats)
  t_1, res_1 = harness.best_pass(fn_1, params, batches, repeats)
  steps = harness.loop_steps(res_n) - harness.loop_steps(res_1)
  return (t_n - t_1) / max(steps, 1), harness.summarise(res_n, t_n, compile_s)


def breakdown(decoder, models: Models, params: dict[str, Any], prompts: Sequence[Sequence[int]],
              *, batch: int, max_new: int, cache_size: int, eos_id: int, pad_id: int,
              repeats: int = 3, t_ar: float | None = None,
              curve: dict[int, float] | None = None) -> dict[str, Any]:
  """The step-cost breakdown of one decoder (see module docstring); times in seconds."""
  batches = harness.make_batches(prompts, batch, pad_id)
  kw = dict(max_new=max_new, cache_size=cache_size, eos_id=eos_id, pad_id=pad_id,
            repeats=repeats)
  t_step, summary = step_time(decoder, models, params, batches, **kw)
  extras = [k for k, _ in models.extras]
  # A no-op model's argmax may be the EOS token; those runs never stop early instead (the
  # time per loop iteration does not depend on when rows stop).
  noop_kw = dict(kw, eos_id=-1)
  t_no_target, _ = step_time(decoder, cost_model.noop_models(models, ['target']), params,
                             batches, **noop_kw)
  t_other, _ = step_time(decoder, cost_model.noop_models(models, ['target'] + extras),
                         params, batches, **noop_kw)
  t_no_drafts = t_step
  if extras:
    t_no_drafts, _ = step_time(decoder, cost_model.noop_models(models, extras), params,
                               batches, **noop_kw)
  T = step_tokens(decoder, models)
  if curve is None or T not in curve:
    curve = dict(curve or {})
    curve[T] = cost_model.forward_time(models.target, params['target'], batch=batch,
                                       tokens=T, cache_size=cache_size,
                                       context=min(cache_size - T, cache_size // 2))
  t_fwd = curve[T]
  out = dict(decoder=decoder.name, batch=batch, step_tokens=T, tau=summary['tau'],
             step_ms=t_step * 1e3, target_fwd_ms=t_fwd * 1e3,
             target_model_ms=(t_step - t_no_target) * 1e3,
             drafter_ms=max(t_step - t_no_drafts, 0.0) * 1e3, other_ms=t_other * 1e3,
             tokens_per_s=summary['tokens_per_s'], generated=summary['generated'],
             output=summary['tokens'])
  out['sum_ms'] = out['target_fwd_ms'] + out['drafter_ms'] + out['other_ms']
  out['overhead_share'] = out['other_ms'] / out['step_ms']
  if t_ar is not None:
    out['ideal'] = cost_model.ideal_speedup(summary['tau'], t_ar, t_fwd)
  return out


def _load(args):
  """(models, params, prompts, eos, pad, name): a trained workdir or a random preset."""
  import cli  # pylint: disable=g-import-not-at-top
  if args.workdir:
    from training import loading  # pylint: disable=g-import-not-at-top
    run = loading.load_model(args.workdir)
    prompts = cli.read_prompts(run.tokenizer, prompt=None, prompts_file=None,
                               heldout=args.prompts, prompt_chars=args.prompt_chars,
                               data_config=run.config['data'])
    name = os.path.basename(os.path.normpath(args.workdir))
    return (Models(run.model), {'target': run.params, **run.extras}, prompts,
            run.tokenizer.eos_id, run.tokenizer.pad_id, name)
  import data  # pylint: disable=g-import-not-at-top
  model, params = cost_model.random_model(args.preset, args.dtype)
  tok = data.make_tokenizer('byte')
  prompts = cli.read_prompts(tok, prompt=None, prompts_file=None, heldout=args.prompts,
                             prompt_chars=args.prompt_chars,
                             data_config={'name': 'python_stdlib'})
  # Random weights rarely say EOS; never stopping keeps every row the same length.
  return Models(model), {'target': params}, prompts, -1, tok.pad_id, args.preset


def run(args) -> str:
  models, params, prompts, eos_id, pad_id, name = _load(args)
  sampling = SamplingConfig()
  cache = int(-(-(max(map(len, prompts)) + args.max_new_tokens + 128) // 64) * 64)
  kw = dict(max_new=args.max_new_tokens, cache_size=cache, eos_id=eos_id, pad_id=pad_id)
  rows = []
  for batch in [int(b) for b in args.batches.split(',')]:
    batches = harness.make_batches(prompts, batch, pad_id)
    ar = registry.build('ar', sampling=sampling)
    t_ar, ar_sum = step_time(ar, models, params, batches, repeats=args.repeats, **kw)
    curve = {}
    for dec_name in args.decoders.split(','):
      dec = registry.build(dec_name, sampling=sampling)
      r = breakdown(dec, models, params, prompts, batch=batch, repeats=args.repeats,
                    t_ar=t_ar, curve=curve, **kw)
      curve[r['step_tokens']] = r['target_fwd_ms'] / 1e3
      r['speedup'] = r['tokens_per_s'] / ar_sum['tokens_per_s']
      r['equals_ar'] = r.pop('output') == ar_sum['tokens']
      r['ar_step_ms'] = t_ar * 1e3
      rows.append(r)
      print(f"B={batch} {dec_name}: step {r['step_ms']:.3f} ms = target {r['target_fwd_ms']:.3f}"
            f" + drafter {r['drafter_ms']:.3f} + other {r['other_ms']:.3f} "
            f"(sum {r['sum_ms']:.3f}); tau {r['tau']:.2f}, {r['speedup']:.2f}x AR "
            f"(ideal {r['ideal']:.2f}x)", flush=True)
  out = f'step_cost_{args.out or name}'
  with open(os.path.join(common.RESULTS_DIR, f'{out}.json'), 'w') as f:
    json.dump({'provenance': common.provenance(), 'rows': rows}, f, indent=1)
  return report(rows, out, name)


def report(rows, out: str, name: str) -> str:
  header = ['decoder', 'batch', 'T', 'tau', 'step ms', 'target fwd ms', 'target model ms',
            'drafter ms', 'other ms', 'other share', 'sum / step', 'speedup vs AR',
            'ideal', 'measured / ideal', '= AR']
  table = []
  for r in rows:
    table.append([r['decoder'], r['batch'], r['step_tokens'], f"{r['tau']:.2f}",
                  f"{r['step_ms']:.3f}", f"{r['target_fwd_ms']:.3f}",
                  f"{r['target_model_ms']:.3f}", f"{r['drafter_ms']:.3f}",
                  f"{r['other_ms']:.3f}", f"{100 * r['overhead_share']:.0f}%",
                  f"{r['sum_ms'] / r['step_ms']:.2f}",
                  f"{r['speedup']:.2f}x" + (' (!)' if harness.implausible(r) else ''),
                  f"{r['ideal']:.2f}x", f"{r['speedup'] / r['ideal']:.2f}",
                  'yes' if r['equals_ar'] else 'NO'])
  body = (f'Model: `{name}`. Times per loop iteration (one draft -> verify -> commit step; '
          'for AR one token). "target fwd": the forward-cost curve at T tokens; "target '
          'model": the step minus the step with the target a no-op; "drafter": the same for '
          'the draft models; "other": the step with every model a no-op (drafting logic, '
          'trees, masks, verification, cache commit, bookkeeping, loop). "sum / step" = '
          '(target fwd + drafter + other) / step. ideal = tau x AR step / target fwd. '
          '(!) marks a speedup above tau (load on the machine, not the method). Temperature '
          '0; "= AR": the tokens equal AR\'s.\n\n'
          + common.markdown_table(header, table))
  return common.write_results(out, 'Step-cost breakdown', body)


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--workdir', default='', help='a trained run (else --preset, random)')
  ap.add_argument('--preset', default='mem')
  ap.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  ap.add_argument('--decoders', default=DEFAULT_DECODERS)
  ap.add_argument('--batches', default='1,8')
  ap.add_argument('--prompts', type=int, default=8)
  ap.add_argument('--prompt_chars', type=int, default=200)
  ap.add_argument('--max_new_tokens', type=int, default=96)
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--out', default='', help='results name suffix (default: the model name)')
  print(run(ap.parse_args()))


if __name__ == '__main__':
  main()
