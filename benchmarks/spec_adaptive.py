"""Adaptive draft length against fixed chains, at controlled acceptance (a system benchmark).

  python -m benchmarks.spec_adaptive --preset=tiny      # steep forward-cost curve (CPU)
  python -m benchmarks.spec_adaptive --preset=mem       # memory-bound (flat) curve (CPU)

A SYSTEM BENCHMARK, NOT A CLAIM ABOUT A REAL DRAFTER: the draft is the oracle of
`benchmarks/oracle.py` (the target's greedy continuation, each token wrong with probability
1 - alpha), run through the real draft-model chain at temperature 0 on random weights. Per
alpha: the speedup over AR (decode phase, timed alternately in one run) of chains of fixed
length k and of `adaptive=1` (longest chain `--gamma`; lengths chosen per step from measured
forward costs and recent acceptance, decoding/speculative/adaptive.py), with each one's ideal
tau * t_AR / t_fwd(T) (adaptive: over the lengths it ran, sum of steps x t_fwd(k + 1)). The
question it answers: does one adaptive setting match the best fixed length on both a steep
and a flat cost curve, without knowing alpha? Writes benchmarks/results/spec_adaptive_<preset>
_<device>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os

import jax

from benchmarks import common
from benchmarks import cost_model
from benchmarks import forward_cost
from benchmarks import harness
from benchmarks import oracle
from benchmarks import spec_system
from decoding import Models, SamplingConfig, registry


def run(args) -> list[dict]:
  model, params, prompts, pad_id = spec_system.load(args)
  models = Models(model, extras=(('draft', oracle.OracleDraft.for_target(model.cfg)),))
  cache = spec_system.cache_slots(prompts, args.max_new_tokens)
  kw = dict(max_new=args.max_new_tokens, cache_size=cache, eos_id=-1, pad_id=pad_id)
  sampling = SamplingConfig()
  base = spec_system.ar_baseline(model, params, prompts, batch=1, pad_id=pad_id, kw=kw,
                                 repeats=args.repeats)
  batches, ar_n, ar_1, t_ar = base.batches, base.ar_n, base.ar_1, base.t_ar
  curve: dict[int, float] = {}

  def t_fwd(T):
    if T not in curve:
      curve[T] = cost_model.forward_time(model, params, batch=1, tokens=T, cache_size=cache,
                                         context=cache // 2)
    return curve[T]

  per_alpha = lambda a: base.oracle_params(params, a)
  device = jax.devices()[0].device_kind
  methods = [(f'chain k={k}', dict(gamma=k)) for k in map(int, args.fixed.split(','))]
  methods.append((f'adaptive (k <= {args.gamma})', dict(gamma=args.gamma, adaptive=True)))
  rows = []
  for name, settings in methods:
    dec = registry.build('speculative', dict(settings, draft_workdir='oracle'), sampling)
    # The adaptive decoder measures its forward costs here, once (both programs share them).
    dec = dec.prepare(models, per_alpha(1.0)[0], batch=1, cache_size=cache)
    fns_n = harness.compile_decoder(dec, models, per_alpha(1.0), batches, **kw)
    fns_1 = harness.compile_decoder(dec, models, per_alpha(1.0), batches, **dict(kw, max_new=1))
    for alpha in map(float, args.alphas.split(',')):
      r = harness.measure_decode_pair(fns_n, fns_1, ar_n, ar_1, per_alpha(alpha), batches,
                                      repeats=args.repeats)
      decode_tokens = r['generated'] - len(batches)
      if settings.get('adaptive'):
        gammas = dec.get_drafter().gammas
        steps = r.get('adaptive_steps', [0] * len(gammas))
        spent = sum(n * t_fwd(g + 1) for g, n in zip(gammas, steps))
        ideal = decode_tokens * t_ar / max(spent, 1e-12)
        lengths = ', '.join(f'{g}: {int(n)}' for g, n in zip(gammas, steps) if n)
      else:
        ideal = cost_model.ideal_speedup(r['decode_tau'], t_ar, t_fwd(settings['gamma'] + 1))
        lengths = ''
      row = dict(device=device, preset=args.preset, method=name, alpha=alpha,
                 tau=r['decode_tau'], speedup=r['speedup'], ideal=ideal,
                 equal_to_ar=r['tokens'] == r['ar_tokens'], lengths=lengths,
                 gammas=list(getattr(dec.get_drafter(), 'gammas', ())), costs=dec.costs,
                 t_ar_ms=t_ar * 1e3)
      rows.append(row)
      print(f"{name} alpha={alpha:g}: tau {row['tau']:.2f}, {row['speedup']:.2f}x AR "
            f"(ideal {ideal:.2f}x) {lengths}", flush=True)
  return rows


def write(rows, args) -> str:
  name = args.out or f'spec_adaptive_{args.preset}_{forward_cost.device_tag()}'
  with open(os.path.join(common.RESULTS_DIR, f'{name}.json'), 'w') as f:
    json.dump(rows, f, indent=1)
  alphas = sorted({r['alpha'] for r in rows})
  methods = list(dict.fromkeys(r['method'] for r in rows))
  cell = {(r['method'], r['alpha']): r for r in rows}
  adaptive = [m for m in methods if m.startswith('adaptive')][0]
  best = {a: max((cell[m, a] for m in methods if m != adaptive), key=lambda r: r['speedup'])
          for a in alphas}
  table = []
  for m in methods:
    worst = min(cell[m, a]['speedup'] / best[a]['speedup'] for a in alphas)
    table.append([m] + [f"{cell[m, a]['speedup']:.2f}x (tau {cell[m, a]['tau']:.2f})"
                        + (' (!)' if harness.implausible(cell[m, a]) else '')
                        for a in alphas] + [f'{worst:.2f}'])
  table.append(['best fixed length'] + [best[a]['method'] for a in alphas] + [''])
  table.append(['adaptive / best fixed'] + [
      f"{cell[adaptive, a]['speedup'] / best[a]['speedup']:.2f}" for a in alphas] + [''])
  lengths = [[f'{a:g}', cell[adaptive, a]['lengths'], f"{cell[adaptive, a]['ideal']:.2f}x"]
             for a in alphas]
  ad = [r for r in rows if r['method'] == adaptive][0]
  body = [
      '**A benchmark of the system, not of a drafter**: oracle drafts (`benchmarks/oracle.py`)'
      f' on preset `{args.preset}` (random weights{spec_system.scaled(args.embed_scale)}), '
      f'{args.prompts} prompts x '
      f'{args.max_new_tokens} new tokens, batch 1, temperature 0; decode-phase speedup over AR '
      f'timed alternately in one run (best of {args.repeats}). One run, one seed. (!) marks a '
      'speedup above tau (a measurement error).\n',
      common.markdown_table(['method'] + [f'alpha {a:g}' for a in alphas]
                            + ['lowest share of the best fixed length'], table), '',
      f'AR step {rows[0]["t_ar_ms"]:.3f} ms. Relative forward costs c(k + 1) / c(1) the '
      f"adaptive decoder measured before compiling, for k = {ad['gammas']}: `{ad['costs']}`.\n",
      '## Lengths the adaptive decoder ran (length: steps) and its ideal\n',
      common.markdown_table(['alpha', 'steps per chain length', 'ideal'], lengths),
      '', f"Every output equals AR's: {all(r['equal_to_ar'] for r in rows)} "
      f"({sum(r['equal_to_ar'] for r in rows)}/{len(rows)})."]
  return common.write_results(name, 'Speculative decoding: adaptive draft length (oracle '
                              'drafts, system benchmark)', '\n'.join(body))


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--preset', default='tiny')
  ap.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  ap.add_argument('--fixed', default='1,2,4,8', help='fixed chain lengths to compare')
  ap.add_argument('--gamma', type=int, default=8, help='longest adaptive chain')
  ap.add_argument('--alphas', default='0.3,0.5,0.7,0.8,0.9,1.0')
  ap.add_argument('--prompts', type=int, default=4)
  ap.add_argument('--prompt_tokens', type=int, default=128)
  ap.add_argument('--max_new_tokens', type=int, default=96)
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--out', default='')
  ap.add_argument('--embed_scale', type=float, default=1.0,
                  help='multiply the random embedding table (as benchmarks.spec_system)')
  args = ap.parse_args()
  print(write(run(args), args))


if __name__ == '__main__':
  main()
