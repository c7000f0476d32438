"""Operations per decode step, counted in the compiled program: no timing, no device.

  python -m benchmarks.step_ops --preset=base --decoders=ar,speculative:gamma=4,medusa

On a GPU, a small model's decode step is bound by kernel launches: the H200 sessions found
`base` and `small` steps far slower than their weights take to read (docs/gpu_suite.md), so
a step costs about its number of kernels times a few microseconds, whatever each computes.
The time outside the target forward is then mostly the count of the loop's small operations
(drafting, tree building, verification, commit, bookkeeping). This counts them where no GPU
is at hand: each decoder's `generate` is compiled by this machine's XLA (random weights of
`--preset`; draft models are the oracle draft of benchmarks/oracle.py, heads and adapters
their training recipe's initial weights, as in benchmarks/step_cost.py), and the operations
one iteration of its decode loop executes are counted in the optimised HLO: every fusion,
library call, copy, scatter or other instruction that runs (parameters, tuples, constants
and bitcasts excluded; a call counts the operations it calls, a GPU command buffer's
kernels among them, and a conditional its larger branch, each plus one for itself). A loop
inside the step counts its body times its trip count where
XLA knows it (a fixed-count drafting loop); a loop whose count depends on the data (a while
loop) counts once and marks the row with '>='. The decode loop is the data-dependent loop
with the most operations (for the adaptive draft length: the loop of its longest chain).
Each operation is also assigned by the name scope jax records in its metadata (`part`):
to a `Transformer` forward ("model"), to another module ("draft modules": the oracle draft,
EAGLE layers, heads), to the loop itself (drafting logic, trees, masks, verification,
commit, bookkeeping), or "unnamed" (what XLA made or rewrote without a name).

XLA:GPU fuses differently from XLA:CPU, so the counts are a proxy for a GPU's launches,
compared between decoders and between versions of the code on the same machine and jax, not
a GPU figure. AR's count is the reference: a drafter whose drafting were free and whose
verification were one forward would execute about AR's count per step.

Writes benchmarks/results/step_ops_<preset>[_<out>].md and .json.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, cost_model, step_cost
from decoding import Models, SamplingConfig, registry, runner

# Instructions that run nothing (views and plumbing).
_FREE = {'parameter', 'get-tuple-element', 'tuple', 'constant', 'bitcast'}
_INSTR = re.compile(r'\s*(?:ROOT )?%?([\w.\-]+) = .*? ([\w\-]+)\(')
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
DEFAULT_DECODERS = ('ar,speculative:gamma=4,speculative:gamma=4:draft_loop=fixed,'
                    'spec_dynamic:tree_nodes=16,medusa,mtp,eagle3,prompt_lookup,'
                    'token_recycling,layerskip,jacobi')


def computations(hlo: str) -> tuple[dict[str, list[str]], str]:
  """({computation name: its instruction lines}, the entry computation's name)."""
  comps, name, entry = {}, None, ''
  for line in hlo.splitlines():
    m = re.match(r'^(ENTRY )?%?([\w.\-]+) .*\{$', line)
    if m:
      name = m.group(2)
      comps[name] = []
      entry = name if m.group(1) else entry
    elif name is not None and line.strip() not in ('', '}'):
      comps[name].append(line)
  return comps, entry


@dataclasses.dataclass
class Loop:
  """A while loop of the compiled program: what its body executes per iteration."""
  body: str
  trips: int | None  # XLA's known trip count; None when it depends on the data
  inner: list['Loop'] = dataclasses.field(default_factory=list)
  # executed ops per iteration by `part` (PARTS), inner loops times their trip counts
  parts: dict[str, int] = dataclasses.field(default_factory=dict)

  @property
  def ops(self) -> int:
    """Executed operations per iteration, inner loops times their trip counts."""
    return sum(self.parts.values())

  @property
  def own(self) -> int:
    """Per iteration, outside inner loops."""
    return self.ops - sum(l.ops * (l.trips or 1) for l in self.inner)

  @property
  def exact(self) -> bool:
    """Every inner loop's trip count is known (else `ops` counts such a loop once)."""
    return all(l.trips is not None and l.exact for l in self.inner)


_OP_NAME = re.compile(r'op_name="([^"]+)"')
PARTS = ('model', 'draft modules', 'loop', 'unnamed')


def part(line: str) -> str:
  """What an instruction belongs to, from the name scope jax records in its metadata (a
  fusion carries its root's): the outermost module scope `Transformer` is a model forward
  (the target's; also a draft model's where it is a `Transformer`), another module scope
  (capitalised: `EagleDraft`, `OracleDraft`, heads) a draft module, a name without a module
  scope the loop (drafting logic, trees, masks, verification, commit, bookkeeping). What
  carries no name is 'unnamed': operations XLA made itself, copies and fills, but also
  products and reductions its CPU passes rewrote (on XLA:CPU most of them are the model's)."""
  m = _OP_NAME.search(line)
  if not m:
    return 'unnamed'
  scopes = re.findall(r'/([A-Z]\w*)/', '/' + m.group(1) + '/')
  if not scopes:
    return 'loop'
  return 'model' if scopes[0] == 'Transformer' else 'draft modules'


def _add(into: dict[str, int], parts: dict[str, int], times: int = 1) -> None:
  for k, v in parts.items():
    into[k] = into.get(k, 0) + v * times


def _count(comps: dict[str, list[str]], name: str, loops: list[Loop]
           ) -> tuple[dict[str, int], list[Loop]]:
  """(the ops computation `name` executes, by `part`; its direct while loops); every loop
  found is also appended to `loops`."""
  parts, direct = {}, []
  for line in comps[name]:
    m = _INSTR.match(line)
    if not m or m.group(2) in _FREE:
      continue
    if m.group(2) != 'while':  # a loop counts as what it runs, not as itself
      _add(parts, {part(line): 1})
    if m.group(2) in ('call', 'conditional'):  # a call's ops (a GPU command buffer's kernels,
      # launched as one graph) / the larger branch
      called = re.findall(r'(?:to_apply|branch_computations|true_computation|'
                          r'false_computation)=\{?([%\w.\-, ]+)\}?', line)
      names = [n.strip().lstrip('%') for group in called for n in group.split(',')]
      counted = [_count(comps, n, loops)[0] for n in names if n in comps]
      _add(parts, max(counted, key=lambda p: sum(p.values()), default={}))
    elif m.group(2) == 'while':  # its body and condition, times the trip count
      trips = _TRIPS.search(line)
      loop = Loop(re.search(r'body=%?([\w.\-]+)', line).group(1),
                  int(trips.group(1)) if trips else None)
      for computation in (loop.body, re.search(r'condition=%?([\w.\-]+)', line).group(1)):
        inner_parts, inner = _count(comps, computation, loops)
        _add(loop.parts, inner_parts)
        loop.inner += inner
      loops.append(loop)
      direct.append(loop)
      _add(parts, loop.parts, loop.trips or 1)
  return parts, direct


def step_loop(hlo: str) -> Loop:
  """The decode loop of a compiled `generate`: the data-dependent while loop that executes
  the most operations per iteration."""
  comps, entry = computations(hlo)
  loops: list[Loop] = []
  _count(comps, entry, loops)
  candidates = [l for l in loops if l.trips is None]
  if not candidates:
    raise ValueError('No data-dependent while loop in the compiled program.')
  return max(candidates, key=lambda l: l.ops)


def count_decoder(decoder, models: Models, params: dict[str, Any], *, batch: int,
                  prompt_len: int, max_new: int, cache_size: int) -> Loop:
  """The decode loop of `decoder` compiled for `batch` rows of `prompt_len` tokens."""
  prompt = jnp.full((batch, prompt_len), 5, jnp.int32)
  lens = jnp.full((batch,), prompt_len, jnp.int32)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(batch))
  ar_like = types.SimpleNamespace(tokens_BxN=np.zeros((batch, max_new), np.int32),
                                  num_generated_B=np.full((batch,), max_new, np.int32))
  models, per_batch = step_cost.with_stand_ins(decoder, models, params,
                                               [(prompt, lens, keys)], [ar_like], cache_size)
  hlo = runner.lower_generate(decoder, models, per_batch[0], prompt, lens, keys,
                              max_new_tokens=max_new, cache_size=cache_size, eos_id=-1,
                              pad_id=0).compile().as_text()
  return step_loop(hlo)


def build(spec: str):
  name, settings = registry.parse_spec(spec)
  decoder = registry.build(name, settings, SamplingConfig())
  if step_cost.is_draft_model(decoder):  # the oracle draft stands in for a draft model
    decoder = registry.build(name, dict(settings, draft_workdir='oracle'), SamplingConfig())
  return decoder, registry.spec_label(name, settings)


def run(args) -> tuple[str, list[dict[str, Any]]]:
  model, params = cost_model.random_model(args.preset, args.dtype)
  models = Models(model)
  cache = int(-(-(args.prompt_len + args.max_new_tokens + 256) // 64) * 64)
  kw = dict(batch=args.batch, prompt_len=args.prompt_len, max_new=args.max_new_tokens,
            cache_size=cache)
  rows, ar_ops, path = [], None, ''
  for spec in args.decoders.split(','):
    decoder, label = build(spec)
    loop = count_decoder(decoder, models, {'target': params}, **kw)
    if ar_ops is None and label == 'ar':
      ar_ops = loop.ops
    rows.append(dict(decoder=label, T=step_cost.step_tokens(decoder, models), ops=loop.ops,
                     exact=loop.exact, own=loop.own,
                     inner=[[l.ops, l.trips] for l in loop.inner],
                     parts={k: loop.parts.get(k, 0) for k in PARTS},
                     over_ar=loop.ops / ar_ops if ar_ops else None))
    print(f"{label}: {'' if loop.exact else '>= '}{loop.ops} ops per step "
          f"({loop.own} outside inner loops; inner loops [ops, trips]: {rows[-1]['inner']}; "
          f"by part: {rows[-1]['parts']})", flush=True)
    path = write(rows, args)  # after every row: a run cut short keeps its rows
  return path, rows


def write(rows: list[dict[str, Any]], args) -> str:
  name = f'step_ops_{args.preset}' + (f'_{args.out}' if args.out else '')
  common.write_json(name, {'provenance': common.provenance(), 'preset': args.preset,
                           'dtype': args.dtype, 'batch': args.batch, 'rows': rows})
  table = common.markdown_table(
      ['decoder', 'T', 'ops per step', 'model', 'draft modules', 'loop', 'unnamed',
       'outside inner loops', 'inner loops (ops x trips)', 'ops / AR\'s'],
      [[r['decoder'], r['T'], ('' if r['exact'] else '>= ') + str(r['ops']),
        *[r['parts'][k] for k in PARTS], r['own'],
        ', '.join(f'{o} x {t if t is not None else "?"}' for o, t in r['inner']) or '-',
        '-' if r['over_ar'] is None else f"{r['over_ar']:.2f}"] for r in rows])
  body = (f'Preset `{args.preset}` ({args.dtype}, random weights), batch {args.batch}, '
          f'prompts of {args.prompt_len} tokens, {args.max_new_tokens} new tokens, '
          'temperature 0; draft models: the oracle draft; heads and adapters: their recipe\'s '
          'initial weights. Operations one iteration of the decode loop executes in the '
          'program compiled by this machine\'s XLA (fusions, library calls, copies, scatters; '
          'a loop inside the step counted times its known trip count, once where the count '
          'depends on the data, marked >=). A proxy for kernel launches on a GPU, where '
          'fusion differs: compare rows and versions on the same machine and jax, not '
          'across them. T: tokens the target forward scores per step. By the name scopes '
          'jax records: "model", in a `Transformer` forward (the target\'s, and a draft\'s '
          'where it is one; early exit drafts through the target\'s own layers); "draft '
          'modules", in another module (the oracle draft, EAGLE layers, heads); "loop", the '
          'rest (drafting logic, trees, masks, verification, commit, bookkeeping); '
          '"unnamed", what carries no name (XLA\'s copies and fills, and products and '
          'reductions its passes rewrote: on XLA:CPU mostly the model\'s). A fusion counts '
          'where its root belongs.\n\n' + table)
  return common.write_results(name, 'Operations per decode step', body)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--preset', default='tiny')
  p.add_argument('--dtype', default='float32')
  p.add_argument('--decoders', default=DEFAULT_DECODERS,
                 help='registry specs, comma-separated (name:field=value:...); put ar first '
                      'for the ops / AR\'s column')
  p.add_argument('--batch', type=int, default=1)
  p.add_argument('--prompt_len', type=int, default=32)
  p.add_argument('--max_new_tokens', type=int, default=96)
  p.add_argument('--out', default='', help='suffix of the results file name')
  print(run(p.parse_args())[0])


if __name__ == '__main__':
  main()
