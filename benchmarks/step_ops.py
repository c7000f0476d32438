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

Bytes per step (`step_bytes`): what the executed operations read and write, from the shapes
in the same HLO, next to what an AR step must move at least (the target's weights and its
key/value cache, each read once). An operation counts its operands and its result, except
that an in-place update (a dynamic-update-slice or scatter, alone or as a fusion's root)
counts its updates, not the buffer it updates, and an operand a fusion only slices or
gathers from counts the slices it takes. It is an upper bound on the traffic (a fusion may
read an operand through a cache more than once, or not at all where XLA skips work) and
says where a step moves more than its weights: a copy of a cache or of a weight inside the
loop (e.g. a concatenation of weights a compiler pass made for one merged product), or
products that read their weights in another dtype. `--top` lists the operations that move
the most bytes per step, and each row its operations by kind (fusions by kind, library calls
by target, copies) with what each kind moves. `--model=FIELD=VALUE,...` sets ModelConfig
fields over the preset's (e.g. fused_projections=true); `--dump_hlo` / `--from_hlo` keep a
device's compiled programs and read them again elsewhere.

Writes benchmarks/results/step_ops_<preset>[_<out>].md and .json.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import os
import re
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, cost_model, step_cost
from decoding import Models, SamplingConfig, registry, runner
from models import Cache

# Instructions that run nothing (views and plumbing).
_FREE = {'parameter', 'get-tuple-element', 'tuple', 'constant', 'bitcast'}
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
  # bytes the executed ops read and write per iteration (`op_bytes`), inner loops times trips
  bytes: int = 0
  # {(opcode, op_name): [bytes per iteration, times executed per iteration]}
  movers: dict[tuple[str, str], list[int]] = dataclasses.field(default_factory=dict)

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


_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2,
                's32': 4, 'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8,
                'c128': 16}
_ARRAY = re.compile(r'\b([a-z][a-z0-9]*)\[([\d,]*)\]')
_LINE = re.compile(r'\s*(?:ROOT )?%?([\w.\-]+) = (.*?) ([\w\-]+)\((.*)$')
_IN_PLACE = ('dynamic-update-slice', 'scatter')
_SLICING = ('slice', 'dynamic-slice', 'gather')


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape ('f32[2,3]{1,0}', or a tuple of them); 8-bit floats and 4-bit
  types count a byte an element, tokens and unknown types nothing."""
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    size = _DTYPE_BYTES.get(dtype, 1 if dtype.startswith(('f8', 'f4', 's4', 'u4')) else 0)
    for d in filter(None, dims.split(',')):
      size *= int(d)
    total += size
  return total


def _split_top(text: str) -> list[str]:
  """Splits at commas outside brackets, braces and parentheses."""
  out, depth, cur = [], 0, ''
  for ch in text:
    depth += (ch in '([{') - (ch in ')]}')
    if ch == ',' and depth == 0:
      out.append(cur)
      cur = ''
    else:
      cur += ch
  return out + [cur] if cur.strip() else out


@dataclasses.dataclass
class Instr:
  """One HLO instruction: name, result shape, opcode, operand names, the rest of the line."""
  name: str
  shape: str
  opcode: str
  operands: list[str]
  attrs: str
  line: str

  @classmethod
  def parse(cls, line: str) -> 'Instr | None':
    m = _LINE.match(line)
    if not m:
      return None
    rest, depth = m.group(4), 1
    for i, ch in enumerate(rest):
      depth += (ch == '(') - (ch == ')')
      if depth == 0:
        break
    else:
      i = len(rest)
    operands = [tok.split()[-1].lstrip('%') for tok in _split_top(rest[:i]) if tok.strip()]
    return cls(m.group(1), m.group(2), m.group(3), operands, rest[i + 1:], line)


def _fusion_traffic(comps: dict[str, list[str]], comp: str, operand_bytes: list[int],
                    result: Instr) -> int:
  """Bytes a fusion moves: its operands but those it updates in place (its root, or an
  element of a tuple root, a dynamic-update-slice / scatter of a parameter: neither that
  operand nor that result counts) and those it only slices (the slices count), plus its
  results."""
  instrs = [i for i in map(Instr.parse, comps.get(comp, [])) if i is not None]
  by_name = {i.name: i for i in instrs}
  param_index = {i.name: int(i.operands[0]) for i in instrs if i.opcode == 'parameter'}
  root = next((i for i in instrs if i.line.lstrip().startswith('ROOT ')), None)
  counted = list(operand_bytes)
  results = shape_bytes(result.shape)
  outputs = ([by_name.get(n) for n in root.operands] if root is not None and
             root.opcode == 'tuple' else [root])
  for out in outputs:
    if (out is not None and out.opcode in _IN_PLACE and out.operands and
        out.operands[0] in param_index):
      idx = param_index[out.operands[0]]
      if idx < len(counted):
        counted[idx] = 0
      results -= shape_bytes(out.shape)
  users: dict[str, list[Instr]] = {}
  for i in instrs:
    for n in i.operands:
      users.setdefault(n, []).append(i)
  for name, idx in param_index.items():
    us = users.get(name, [])
    if (us and idx < len(counted) and counted[idx] and
        all(u.opcode in _SLICING and u.operands[0] == name for u in us)):
      counted[idx] = min(counted[idx], sum(shape_bytes(u.shape) for u in us))
  return sum(counted) + max(results, 0)


def op_bytes(comps: dict[str, list[str]], shapes: dict[str, str], instr: Instr) -> int:
  """Bytes an executed (non-control) instruction reads and writes (see the module doc)."""
  if instr.opcode in _FREE or instr.opcode.endswith('-done'):
    return 0
  operand_bytes = [shape_bytes(shapes.get(n, '')) for n in instr.operands]
  if instr.opcode.endswith('-start') and 'calls=' in instr.attrs:  # an asynchronous
    # wrapper (XLA:GPU): what its computation runs, not the tuple it hands to its -done
    called = re.search(r'calls=%?([\w.\-]+)', instr.attrs).group(1)
    body = [i for i in map(Instr.parse, comps.get(called, [])) if i is not None]
    inner = {i.name: i.shape for i in body}
    return sum(op_bytes(comps, inner, i) for i in body)
  if instr.opcode == 'fusion':
    called = re.search(r'calls=%?([\w.\-]+)', instr.attrs)
    return _fusion_traffic(comps, called.group(1) if called else '', operand_bytes, instr)
  if instr.opcode in _IN_PLACE:
    return sum(operand_bytes[1:])
  if instr.opcode in _SLICING:
    return 2 * shape_bytes(instr.shape) + sum(operand_bytes[1:])
  result = instr.shape
  if instr.opcode == 'custom-call' and result.startswith('('):  # a library call's scratch
    result = _split_top(result.strip()[1:-1])[0]  # space is not traffic: its first result
  return sum(operand_bytes) + shape_bytes(result)


def _label(instr: Instr) -> tuple[str, str]:
  kind = re.search(r'kind=(\w+)', instr.attrs) if instr.opcode == 'fusion' else None
  target = re.search(r'custom_call_target="([^"]+)"', instr.attrs)
  op = instr.opcode + (f' ({kind.group(1)})' if kind else '') + (
      f' {target.group(1)}' if target else '')
  m = _OP_NAME.search(instr.line)
  return op, (m.group(1) if m else instr.name)


@dataclasses.dataclass
class Tally:
  """What a computation executes: ops by part, bytes, the movers, its direct while loops."""
  parts: dict[str, int] = dataclasses.field(default_factory=dict)
  bytes: int = 0
  movers: dict[tuple[str, str], list[int]] = dataclasses.field(default_factory=dict)
  loops: list[Loop] = dataclasses.field(default_factory=list)

  def add(self, parts: dict[str, int], nbytes: int,
          movers: dict[tuple[str, str], list[int]], times: int = 1) -> None:
    _accumulate(self, parts, nbytes, movers, times)


def _accumulate(into: Tally | Loop, parts: dict[str, int], nbytes: int,
                movers: dict[tuple[str, str], list[int]], times: int = 1) -> None:
  """Adds ops by part, bytes and movers, `times` over, to a Tally or a Loop."""
  for k, v in parts.items():
    into.parts[k] = into.parts.get(k, 0) + v * times
  into.bytes += nbytes * times
  for key, (b, n) in movers.items():
    acc = into.movers.setdefault(key, [0, 0])
    acc[0] += b * times
    acc[1] += n * times


def _count(comps: dict[str, list[str]], name: str, loops: list[Loop]) -> Tally:
  """What computation `name` executes (ops by `part`, bytes, movers) and its direct while
  loops; every loop found is also appended to `loops`."""
  tally = Tally()
  instrs = [i for i in map(Instr.parse, comps[name]) if i is not None]
  shapes = {i.name: i.shape for i in instrs}
  for instr in instrs:
    if instr.opcode in _FREE:
      continue
    line = instr.line
    if instr.opcode in ('call', 'conditional'):  # a call's ops (a GPU command buffer's
      # kernels, launched as one graph) / the larger branch, plus one for itself
      called = re.findall(r'(?:to_apply|branch_computations|true_computation|'
                          r'false_computation)=\{?([%\w.\-, ]+)\}?', line)
      names = [n.strip().lstrip('%') for group in called for n in group.split(',')]
      counted = [_count(comps, n, loops) for n in names if n in comps]
      tally.add({part(line): 1}, 0, {})
      if counted:
        big = max(counted, key=lambda t: sum(t.parts.values()))
        tally.add(big.parts, big.bytes, big.movers)
    elif instr.opcode == 'while':  # its body and condition, times the trip count
      trips = _TRIPS.search(line)
      loop = Loop(re.search(r'body=%?([\w.\-]+)', line).group(1),
                  int(trips.group(1)) if trips else None)
      for computation in (loop.body, re.search(r'condition=%?([\w.\-]+)', line).group(1)):
        inner = _count(comps, computation, loops)
        _accumulate(loop, inner.parts, inner.bytes, inner.movers)
        loop.inner += inner.loops
      loops.append(loop)
      tally.loops.append(loop)
      tally.add(loop.parts, loop.bytes, loop.movers, loop.trips or 1)
    else:
      nbytes = op_bytes(comps, shapes, instr)
      tally.add({part(line): 1}, nbytes, {_label(instr): [nbytes, 1]})
  return tally


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
                  prompt_len: int, max_new: int, cache_size: int,
                  dump_to: str | None = None, draft_vocab: int = 0) -> Loop:
  """The decode loop of `decoder` compiled for `batch` rows of `prompt_len` tokens; with
  `dump_to`, the compiled program's HLO text is also written there, gzipped (so that a
  device's program can be read again where there is no device: `--from_hlo`). `draft_vocab`:
  EAGLE, Medusa and MTP stand-ins draft over that many tokens (0 = the whole vocabulary)."""
  prompt = jnp.full((batch, prompt_len), 5, jnp.int32)
  lens = jnp.full((batch,), prompt_len, jnp.int32)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(batch))
  ar_like = types.SimpleNamespace(tokens_BxN=np.zeros((batch, max_new), np.int32),
                                  num_generated_B=np.full((batch,), max_new, np.int32))
  models, per_batch = step_cost.with_stand_ins(decoder, models, params,
                                               [(prompt, lens, keys)], [ar_like], cache_size,
                                               draft_vocab=draft_vocab)
  hlo = runner.lower_generate(decoder, models, per_batch[0], prompt, lens, keys,
                              max_new_tokens=max_new, cache_size=cache_size, eos_id=-1,
                              pad_id=0).compile().as_text()
  if dump_to:
    os.makedirs(os.path.dirname(dump_to) or '.', exist_ok=True)
    with gzip.open(dump_to, 'wt') as f:
      f.write(hlo)
  return step_loop(hlo)


def read_hlo(path: str) -> str:
  """An HLO text file, gzipped ('.gz') or not."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rt') as f:
    return f.read()


def build(spec: str):
  name, settings = registry.parse_spec(spec)
  decoder = registry.build(name, settings, SamplingConfig())
  if step_cost.is_draft_model(decoder):  # the oracle draft stands in for a draft model
    decoder = registry.build(name, dict(settings, draft_workdir='oracle'), SamplingConfig())
  return decoder, registry.spec_label(name, settings)


def top_movers(loop: Loop, n: int) -> list[dict[str, Any]]:
  """The n (opcode, op_name) groups that move the most bytes per step."""
  top = sorted(loop.movers.items(), key=lambda kv: -kv[1][0])[:n]
  return [dict(op=op, name=name, bytes=b, count=c) for (op, name), (b, c) in top]


def by_kind(loop: Loop) -> dict[str, list[int]]:
  """{operation kind (opcode, a fusion's kind, a library call's target): [executed per step,
  bytes per step]}, most executed first: what a GPU's kernels per step are made of."""
  kinds: dict[str, list[int]] = {}
  for (op, _), (b, c) in loop.movers.items():
    into = kinds.setdefault(op, [0, 0])
    into[0] += c
    into[1] += b
  return dict(sorted(kinds.items(), key=lambda kv: -kv[1][0]))


def floor_bytes(model, params: Any, batch: int, cache_size: int) -> tuple[int, int]:
  """(the target's weight bytes, its key/value cache's bytes): what an AR step reads at
  least."""
  cache = jax.eval_shape(lambda: Cache.init(model.cfg, batch, cache_size))
  return (cost_model.weight_bytes(params),
          sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache.layers)))


def run(args) -> tuple[str, list[dict[str, Any]]]:
  model, params = cost_model.random_model(args.preset, args.dtype)
  model = cost_model.with_fields(model, args.model)  # ModelConfig fields (same weights)
  models = Models(model)
  cache = int(-(-(args.prompt_len + args.max_new_tokens + 256) // 64) * 64)
  kw = dict(batch=args.batch, prompt_len=args.prompt_len, max_new=args.max_new_tokens,
            cache_size=cache)
  weights, kv = floor_bytes(model, params, args.batch, cache)
  rows, ar_ops, path = [], None, ''
  for spec, vocab in step_cost.with_draft_vocabs(args.decoders,
                                                 getattr(args, 'draft_vocabs', '0')):
    decoder, label = build(spec)
    label = step_cost.vocab_label(label, vocab)
    dump = (os.path.join(args.dump_hlo, f'{args.preset}_{args.dtype}_' +
                         re.sub(r'[^\w.=-]+', '_', label).strip('_') + '.hlo.gz')
            if args.dump_hlo else None)
    loop = count_decoder(decoder, models, {'target': params}, **kw, dump_to=dump,
                         draft_vocab=vocab)
    if ar_ops is None and label == 'ar':
      ar_ops = loop.ops
    rows.append(dict(decoder=label, T=step_cost.step_tokens(decoder, models), ops=loop.ops,
                     exact=loop.exact, own=loop.own,
                     inner=[[l.ops, l.trips] for l in loop.inner],
                     parts={k: loop.parts.get(k, 0) for k in PARTS},
                     over_ar=loop.ops / ar_ops if ar_ops else None,
                     bytes=loop.bytes, weight_bytes=weights, cache_bytes=kv, cache_slots=cache,
                     top=top_movers(loop, args.top), kinds=by_kind(loop)))
    print(f"{label}: {'' if loop.exact else '>= '}{loop.ops} ops per step "
          f"({loop.own} outside inner loops; inner loops [ops, trips]: {rows[-1]['inner']}; "
          f"by part: {rows[-1]['parts']}); {loop.bytes / 1e6:.2f} MB per step "
          f"(weights {weights / 1e6:.2f} MB, cache {kv / 1e6:.2f} MB)", flush=True)
    path = write(rows, args)  # after every row: a run cut short keeps its rows
  return path, rows


def _mb(b: int) -> str:
  return f'{b / 1e6:.2f}'


def write(rows: list[dict[str, Any]], args) -> str:
  name = f'step_ops_{args.preset}' + (f'_{args.out}' if args.out else '')
  common.write_json(name, {'provenance': common.provenance(), 'preset': args.preset,
                           'dtype': args.dtype, 'batch': args.batch, 'rows': rows})
  table = common.markdown_table(
      ['decoder', 'T', 'ops per step', 'model', 'draft modules', 'loop', 'unnamed',
       'outside inner loops', 'inner loops (ops x trips)', 'ops / AR\'s', 'MB per step',
       'MB / (weights + cache)'],
      [[r['decoder'], r['T'], ('' if r['exact'] else '>= ') + str(r['ops']),
        *[r['parts'][k] for k in PARTS], r['own'],
        ', '.join(f'{o} x {t if t is not None else "?"}' for o, t in r['inner']) or '-',
        '-' if r['over_ar'] is None else f"{r['over_ar']:.2f}", _mb(r['bytes']),
        f"{r['bytes'] / (r['weight_bytes'] + r['cache_bytes']):.2f}"] for r in rows])
  movers = '\n\n'.join(
      f"**{r['decoder']}**: " + '; '.join(
          f"{m['op']} `{m['name'][-90:]}` {_mb(m['bytes'])} MB ({m['count']}x)"
          for m in r['top']) for r in rows if r['top'])
  kinds = '\n\n'.join(
      f"**{r['decoder']}**: " + '; '.join(f'{k} {n}x ({_mb(b)} MB)'
                                          for k, (n, b) in list(r['kinds'].items())[:8])
      for r in rows if r.get('kinds'))
  weights, kv = rows[0]['weight_bytes'], rows[0]['cache_bytes']
  body = (f'Preset `{args.preset}` ({args.dtype}, random weights'
          + (f'; model fields {args.model}' if args.model else '') + f'), batch {args.batch}, '
          f'prompts of {args.prompt_len} tokens, {args.max_new_tokens} new tokens, '
          'temperature 0; draft models: the oracle draft; heads and adapters: their recipe\'s '
          'initial weights' + ('; "(draft vocabulary N)": an EAGLE draft, Medusa heads or '
                               'MTP modules over a reduced vocabulary of N tokens '
                               '(`spec.draft_vocab`; ids 0 .. N - 1 here)'
                               if any('draft vocabulary' in r['decoder'] for r in rows)
                               else '')
          + ('; "draft_vocab=N": the early exit drafts over N tokens (FR-Spec, ids 0 .. N - 1 '
             'here)' if any('draft_vocab=' in r['decoder'] for r in rows) else '')
          + '. Operations one iteration of the decode loop '
          'executes in the '
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
          'where its root belongs.\n\n'
          f'MB per step: what the executed operations read and write, from their shapes '
          '(in-place updates count their updates, sliced operands their slices; an upper '
          'bound on the traffic, `benchmarks/step_ops.py`), against what an AR step reads at '
          f'least: the target\'s weights ({_mb(weights)} MB) and its key/value cache '
          f'({rows[0]["cache_slots"]} slots, {_mb(kv)} MB). Above about 1, '
          'the step moves more than its weights and cache: a copy of a cache or weight '
          'in the loop, or weights read in another dtype (the largest movers below).\n\n'
          + table + ('\n\nLargest movers per step (opcode, jax name, MB, times executed):'
                     '\n\n' + movers if movers else '')
          + ('\n\nOperations per step by kind (executed, MB moved), the most executed '
             'first:\n\n' + kinds if kinds else ''))
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
  p.add_argument('--model', default='',
                 help='ModelConfig fields over the preset\'s, e.g. fused_projections=true '
                      '(comma-separated FIELD=VALUE; the same random weights)')
  p.add_argument('--draft_vocabs', default='0',
                 help='EAGLE, Medusa, MTP, LayerSkip, Kangaroo and DEL rows: one per draft '
                      'vocabulary size, comma-separated (0 = the whole vocabulary; N = a '
                      'reduced vocabulary of N tokens, as EAGLE-3 trains with '
                      'spec.draft_vocab and the early exits take with draft_vocab=N)')
  p.add_argument('--top', type=int, default=5,
                 help='list this many operations that move the most bytes per step')
  p.add_argument('--out', default='', help='suffix of the results file name')
  p.add_argument('--dump_hlo', default='',
                 help='a folder: write each decoder\'s compiled program there (HLO text, '
                      'gzipped), to be read again with --from_hlo where there is no device')
  p.add_argument('--from_hlo', default='',
                 help='comma-separated HLO files (as --dump_hlo writes them): print their '
                      'decode loops\' ops, bytes and largest movers; compiles nothing, '
                      'writes no results file')
  args = p.parse_args()
  if args.from_hlo:
    for path in args.from_hlo.split(','):
      loop = step_loop(read_hlo(path))
      print(f"{path}: {'' if loop.exact else '>= '}{loop.ops} ops per step, by part "
            f"{loop.parts}; {loop.bytes / 1e6:.2f} MB per step; largest movers:")
      for m in top_movers(loop, args.top):
        print(f"  {m['bytes'] / 1e6:10.3f} MB  {m['count']:4d}x  {m['op']}  {m['name']}")
    return
  print(run(args)[0])


if __name__ == '__main__':
  main()
