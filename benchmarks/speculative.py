"""Speculative decoding benchmark: every method against our AR decoder, in the same run.

  # 1. train the target and the drafters (docs/speculative.md, about 5-15 minutes each on CPU)
  # 2. measure (one job per temperature / batch size keeps each under ~15 minutes on CPU):
  python -m benchmarks.speculative --temperature=0 --batch_size=1
  python -m benchmarks.speculative --temperature=0 --batch_size=8
  python -m benchmarks.speculative --temperature=1 --batch_size=1
  python -m benchmarks.speculative --temperature=1 --batch_size=8
  # 3. merge the measurements into benchmarks/results/speculative.md (+ acceptance plot):
  python -m benchmarks.speculative --report

Held-out prompts of the embedded code corpus (validation split). Per method: tau (tokens per
target forward, the bonus token counted, prefill included), acceptance by draft position
(share of verification steps whose accepted path reached depth d), target and other forwards
per generated token, tokens/s and the speedup against AR: after one AOT compile, AR and the
method are timed alternately (`--repeats` passes each over all prompts) and each keeps its
fastest pass, so both see the same load on a shared machine. At temperature 0 the report also
says whether the tokens equal AR's. Each row's ideal speedup (the report's `ideal_cells`)
comes from forward probes of the target over 1 and over the step's T tokens, timed in the same
turns as its passes (`--probes=0`: none). `--merge` adds or replaces methods in an existing raw
file of the same setting (e.g. after training a missing drafter). Methods whose runs are
missing (no draft / heads trained) are skipped and listed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any

import numpy as np

import workbench
from benchmarks import common
from benchmarks import cost_model
from benchmarks import harness
from benchmarks import step_cost
from decoding import SamplingConfig

RAW_DIR = os.path.join(common.RESULTS_DIR, 'speculative_raw')

QUARTER = 'quarter'  # a `draft_vocab` setting: a quarter of the target's vocabulary

# name -> (decoder, settings, needed runs). Trees of a draft model stay within 64 nodes.
METHODS: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    'draft chain g4': ('speculative', dict(gamma=4), ('draft',)),
    'draft chain adaptive': ('speculative', dict(gamma=8, stop_below=0.4), ('draft',)),
    'draft chain g8': ('speculative', dict(gamma=8), ('draft',)),
    # the chain length per step from recent acceptance and the forward costs measured at
    # compile time (decoding/speculative/adaptive.py), up to 8
    'draft chain adaptive length': ('speculative', dict(gamma=8, adaptive=True), ('draft',)),
    'draft static tree 32': ('speculative', dict(tree='static', gamma=6, tree_nodes=32),
                             ('draft',)),
    'draft dynamic tree 32': ('spec_dynamic', dict(gamma=6, top_k=4, tree_nodes=32),
                              ('draft',)),
    'draft static tree 60': ('speculative', dict(tree='static', gamma=8, tree_nodes=60),
                             ('draft',)),
    'draft dynamic tree 60': ('spec_dynamic', dict(gamma=8, top_k=6, tree_nodes=60),
                              ('draft',)),
    'draft static tree 64': ('speculative', dict(tree='static', gamma=10, tree_nodes=64),
                             ('draft',)),
    'draft dynamic tree 64': ('spec_dynamic', dict(gamma=10, top_k=4, tree_nodes=64),
                              ('draft',)),
    'draft RSD-S tree 32': ('spec_rsd', dict(gamma=8, top_k=4, tree_nodes=32), ('draft',)),
    'draft K-SEQ 4x3': ('speculative', dict(tree='static', branching='4,1,1', verifier='kseq'),
                        ('draft',)),
    'prompt lookup': ('prompt_lookup', {}, ()),
    'token recycling': ('token_recycling', {}, ()),
    'jacobi': ('jacobi', {}, ()),
    'lookahead': ('lookahead', {}, ()),
    'layerskip': ('layerskip', dict(exit_layer=2), ()),
    # the same exit, its chain length per step from recent acceptance and the step's cost
    # (the draft layers counted), up to 8
    'layerskip adaptive length': ('layerskip', dict(exit_layer=2, gamma=8, adaptive=True), ()),
    'kangaroo': ('kangaroo', {}, ('kangaroo',)),
    'del': ('del', {}, ()),
    'medusa': ('medusa', dict(gamma=4, tree_nodes=32), ('medusa',)),
    'mtp': ('mtp', dict(gamma=3), ('mtp',)),
    # EAGLE-3 with its EAGLE-2 dynamic tree (benchmarks/spec_eagle.py compares it in depth)
    'eagle3 dynamic tree 32': ('eagle3', dict(gamma=6, top_k=4, tree_nodes=32), ('eagle3',)),
    'eagle3 chain g4': ('eagle3', dict(tree='chain', gamma=4), ('eagle3',)),
    # FR-Spec: the draft model's / the early exit's head over the quarter of the vocabulary
    # most frequent in the target's training data (draft_vocab = V // 4, as EAGLE-3 drafts over
    # a quarter of Llama-3's; models/draft_vocab.py)
    'draft chain g4 (quarter vocabulary)': ('speculative', dict(gamma=4, draft_vocab=QUARTER),
                                            ('draft',)),
    'draft dynamic tree 32 (quarter vocabulary)': (
        'spec_dynamic', dict(gamma=6, top_k=4, tree_nodes=32, draft_vocab=QUARTER), ('draft',)),
    'layerskip (quarter vocabulary)': ('layerskip', dict(exit_layer=2, draft_vocab=QUARTER), ()),
    # heads trained over the whole vocabulary, drafting over the quarter (decode-time)
    'medusa (quarter vocabulary)': ('medusa', dict(gamma=4, tree_nodes=32, draft_vocab=QUARTER),
                                    ('medusa',)),
}


RUNS = ('draft', 'medusa', 'mtp', 'kangaroo', 'eagle3')  # --NAME: the run a method may need


def open_runs(args) -> tuple[workbench.Workbench, dict[str, str]]:
  """(workbench of the target, {name: workdir} of the runs found): the draft model's run
  (checked against the target's vocabulary) and the heads trained on the frozen target
  (`medusa`, `mtp`, `kangaroo`, `eagle3`, attached as params[name]); missing runs are
  skipped with a message."""
  bench = workbench.Workbench.load(args.target, dtype=getattr(args, 'dtype', '') or None)
  have = {}
  for name in RUNS:
    workdir = getattr(args, name, '')  # a caller without --NAME has no such run
    if not workbench.has_checkpoint(workdir):
      print(f'{name}: no checkpoint in {workdir!r}; its methods are skipped', flush=True)
      continue
    if name == 'draft':
      bench.run_of(workdir)
    else:
      bench.add_heads(name, workdir)
    have[name] = workdir
  return bench, have


def build_method(name: str, bench: workbench.Workbench, draft_workdir: str,
                 sampling: SamplingConfig):
  """(decoder, models, params) of METHODS[name] on the target of `bench`."""
  dec_name, settings, needs = METHODS[name]
  settings = dict(settings)
  if 'draft' in needs:
    settings['draft_workdir'] = draft_workdir
  if dec_name == 'layerskip':  # a shallow target (a CPU rehearsal): exit before the last layer
    settings['exit_layer'] = min(settings['exit_layer'], bench.model.cfg.num_layers - 1)
  if settings.get('draft_vocab') == QUARTER:
    settings['draft_vocab'] = bench.tokenizer.vocab_size // 4
  dec = bench.decoder(dec_name, sampling, settings)
  return (dec, *bench.models_for(dec))


def run(args) -> str:
  bench, have = open_runs(args)
  tok = bench.tokenizer
  prompts = workbench.read_prompts(tok, prompt=None, prompts_file=None, heldout=args.prompts,
                                   prompt_chars=args.prompt_chars,
                                   data_config=bench.config['data'])
  sampling = SamplingConfig(temperature=args.temperature)
  names = [m.strip() for m in args.methods.split(',')] if args.methods else list(METHODS)
  unknown = [m for m in names if m not in METHODS]
  if unknown:
    raise ValueError(f'Unknown methods {unknown}; choose from {list(METHODS)}.')
  if args.repeats < 1:
    raise ValueError(f'--repeats must be >= 1, got {args.repeats}.')
  cache = int(np.ceil((max(map(len, prompts)) + args.max_new_tokens + 128) / 64) * 64)
  batches = harness.make_batches(prompts, args.batch_size, tok.pad_id,
                                 bucket=harness.one_shape(prompts))  # one compile per method
  kw = dict(max_new=args.max_new_tokens, cache_size=cache, eos_id=tok.eos_id, pad_id=tok.pad_id)
  ar_dec = bench.decoder('ar', sampling)
  ar_models, ar_params = bench.models_for(ar_dec)[0], {'target': bench.params}  # as measure_pair
  ar_fns, ar_compile = harness.compile_decoder(ar_dec, ar_models, ar_params, batches, **kw)
  ar_best, ar_results = harness.best_pass(ar_fns, ar_params, batches, args.repeats)
  ar = harness.summarise(ar_results, ar_best, ar_compile)
  path = os.path.join(args.raw_dir, f't{args.temperature:g}_b{args.batch_size}{args.part}.json')
  rows: dict[str, Any] = {}
  skipped: list[str] = []
  commands: list[str] = []
  if args.merge and os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if (old['prompts'], old['max_new_tokens']) != (len(prompts), args.max_new_tokens):
      raise ValueError(f'{path} was measured with {old["prompts"]} prompts x '
                       f'{old["max_new_tokens"]} tokens; rerun without --merge.')
    rows, commands = old['rows'], old.get('commands', [old['provenance']])
    skipped = [s for s in old['skipped'] if s.split(' (')[0] not in names]
  rows['ar'] = {k: v for k, v in ar.items() if k != 'tokens'}
  # Forward probes (the target, its trained weights, this batch size and cache, a context of
  # the prompt plus half the new tokens), timed in turns with each method's passes.
  context = harness.one_shape(prompts) + args.max_new_tokens // 2
  probe_cache: dict[tuple[int, bool], Any] = {}

  def forward_probe(T: int, tree: bool):
    if (T, tree) not in probe_cache:
      probe_cache[T, tree] = cost_model.forward_probe(
          ar_models.target, bench.params, batch=args.batch_size, tokens=T, cache_size=cache,
          context=min(context, cache - T), explicit_mask=tree)
    return probe_cache[T, tree]

  print(f"ar: {ar['tokens_per_s']:.1f} tok/s", flush=True)
  for i, name in enumerate(names):
    needs = METHODS[name][2]
    if any(n not in have for n in needs):
      skipped.append(f'{name} (needs {", ".join(needs)})')
      rows.pop(name, None)
      continue
    try:
      dec, models, params = build_method(name, bench, args.draft, sampling)
      method = harness.compile_decoder(dec, models, params, batches, **kw)
      probes, probe_T = [], []
      if args.probes:  # the warm-up pass says the step's tokens T; AR ran before
        first = harness.summarise(harness.timed_pass(method[0], params, batches)[1], 1.0, 0.0)
        if 'drafted_per_step' in first:
          tree = not step_cost.step_is_chain(dec, models)
          specs = step_probes(1 + first['drafted_per_step'], tree)
          probe_T = [T for T, _ in specs]
          probes = [forward_probe(T, explicit) for T, explicit in specs]
      r, ar_wall = harness.measure_pair(method, (ar_fns, ar_compile), params, batches,
                                        repeats=args.repeats, warmup=not args.probes,
                                        probes=probes)
      if probes:
        r['forward_ms'] = [[T, t * 1e3] for T, t in zip(probe_T, r.pop('probe_s'))]
        r['forward_mask'] = 'tree' if tree else 'causal'
      r['loop_tau'] = harness.loop_tau(ar['loop_steps'], r['loop_steps'])
    except Exception as e:  # pylint: disable=broad-except
      # one method that breaks (e.g. out of memory on a lent GPU) leaves the others' rows
      print(f'{name}: FAILED: {type(e).__name__}: {e}', flush=True)
      skipped.append(f'{name} (failed: {type(e).__name__}: {str(e).splitlines()[0][:200]})')
      rows.pop(name, None)
      continue
    r['ar_tokens_per_s'] = ar['generated'] / ar_wall
    r['speedup'] = r['tokens_per_s'] / r['ar_tokens_per_s']
    if args.temperature == 0:
      r['equals_ar'] = r['tokens'] == ar['tokens']
    r.pop('tokens')
    rows[name] = r
    print(f"{name}: tau {r['tau']:.2f}, {r['tokens_per_s']:.1f} tok/s vs AR "
          f"{r['ar_tokens_per_s']:.1f}, {r['speedup']:.2f}x"
          + (f", = AR: {r.get('equals_ar')}" if args.temperature == 0 else ''), flush=True)
    # after every method, saying which are still to come: a run its time limit cuts short
    # leaves a file that names the methods it never reached
    _write(path, args, len(prompts), commands,
           skipped + [f'{n} (not reached: the run ended before it)' for n in names[i + 1:]],
           rows)
  _write(path, args, len(prompts), commands, skipped, rows)
  return path


def _write(path, args, num_prompts, commands, skipped, rows) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump({'temperature': args.temperature, 'batch_size': args.batch_size,
               'prompts': num_prompts, 'max_new_tokens': args.max_new_tokens,
               'provenance': commands[0] if commands else common.provenance(),
               'commands': commands + [common.provenance()], 'skipped': skipped,
               'rows': rows}, f, indent=1)


def step_probes(step_tokens: float, tree: bool) -> list[tuple[int, bool]]:
  """(tokens, explicit tree mask) of the forwards to probe for a step of `step_tokens` tokens
  on average: 1 token as AR's step runs it (causal), and the integers on either side of
  `step_tokens` with the step's own mask (the ideal interpolates between them)."""
  lo, hi = int(np.floor(step_tokens)), int(np.ceil(step_tokens))
  return [(1, False)] + [(T, tree) for T in sorted({lo, hi} - {1})]


def _budget(name: str) -> int | None:
  """Node budget of a draft-model tree method (from its name), None for other methods."""
  found = re.search(r'\btree (\d+)', name) if name.startswith('draft ') else None
  return int(found.group(1)) if found else None


def goals(runs) -> list[list[str]]:
  """The issue's goals, judged on the temperature-0 measurements."""
  t0 = [r for r in runs if r['temperature'] == 0]
  out = []
  def where(r):
    return f"t0 b{r['batch_size']}"
  # 1. a draft-model tree of <= 64 nodes reaches tau >= 4.
  cands = [(row['tau'], n, r) for r in t0 for n, row in r['rows'].items()
           if (_budget(n) or 99) <= 64]
  if cands:
    tau, n, r = max(cands, key=lambda c: c[0])
    out.append(['draft-model tree <= 64 nodes: tau >= 4', f'{tau:.2f} ({n}, {where(r)})',
                'met' if tau >= 4 else 'NOT met'])
  else:
    out.append(['draft-model tree <= 64 nodes: tau >= 4', 'no draft run', 'not measured'])
  # 2. the dynamic tree beats the best static tree of the same node budget.
  for r in t0:
    budgets = sorted({_budget(n) for n in r['rows'] if _budget(n)})
    for nodes in budgets:
      dyn = [(row['tau'], n) for n, row in r['rows'].items()
             if _budget(n) == nodes and 'dynamic' in n]
      sta = [(row['tau'], n) for n, row in r['rows'].items()
             if _budget(n) == nodes and 'static' in n]
      if dyn and sta:
        d, s = max(dyn), max(sta)
        out.append([f'dynamic tree beats best static tree, {nodes} nodes ({where(r)})',
                    f'tau {d[0]:.2f} vs {s[0]:.2f}', 'met' if d[0] > s[0] else 'NOT met'])
  # 3. Token Recycling tau >= 2.
  for r in t0:
    row = r['rows'].get('token recycling')
    if row:
      out.append([f'Token Recycling tau >= 2 ({where(r)})', f"{row['tau']:.2f}",
                  'met' if row['tau'] >= 2 else 'NOT met'])
  # 4. best method >= 2x AR on CPU, >= 2.5x on a GPU (judged by the device of the run).
  gpu_judged = False
  for r in t0:
    sp = [(row['speedup'], n) for n, row in r['rows'].items()
          if 'speedup' in row and not harness.implausible(row)]
    noisy = [n for n, row in r['rows'].items() if harness.implausible(row)]
    if sp:
      best = max(sp)
      dev = r['provenance'].split('\n')[0].removeprefix('- device: ')
      on_gpu = dev.startswith('gpu')
      gpu_judged |= on_gpu
      need = 2.5 if on_gpu else 2
      note = f'; excluded as timing noise (speedup > tau): {", ".join(noisy)}' if noisy else ''
      out.append([f'best method >= {need:g}x AR on {"a GPU" if on_gpu else "CPU"} '
                  f'({where(r)})', f'{best[0]:.2f}x ({best[1]}; {dev}{note})',
                  'met' if best[0] >= need else 'NOT met'])
  if not gpu_judged:
    out.append(['best method >= 2.5x AR on a GPU', '-', 'needs GPU, not measured'])
  out.append(['>= 2x transformers assisted generation tokens/s (batch 1, GPU)', '-',
              '`python -m benchmarks.spec_peer` (speculative_peer*.md)'])
  return out


def _merged_runs(raw_dir: str = RAW_DIR) -> list[dict[str, Any]]:
  """Raw files grouped by (temperature, batch size): parts (`--part`) add their methods."""
  groups: dict[tuple[float, int], dict[str, Any]] = {}
  for name in sorted(os.listdir(raw_dir)):
    if not name.endswith('.json'):
      continue
    with open(os.path.join(raw_dir, name)) as f:
      r = json.load(f)
    key = (r['temperature'], r['batch_size'])
    if key not in groups:
      groups[key] = r
      continue
    g = groups[key]
    if (g['prompts'], g['max_new_tokens']) != (r['prompts'], r['max_new_tokens']):
      raise ValueError(f'{name}: {r["prompts"]} prompts x {r["max_new_tokens"]} tokens, but '
                       f'the other files of this setting have {g["prompts"]} x '
                       f'{g["max_new_tokens"]}.')
    g['commands'] = g.get('commands', [g['provenance']]) + r.get('commands', [r['provenance']])
    for n, row in r['rows'].items():
      if n != 'ar':
        g['rows'][n] = row
    g['skipped'] = [x for x in g['skipped'] + r['skipped']
                    if x.split(' (')[0] not in g['rows']]
    g['skipped'] = list(dict.fromkeys(g['skipped']))
  return [groups[k] for k in sorted(groups)]


def curve_ratio(curve_rows: list[dict[str, Any]], batch: int, tokens: float) -> float | None:
  """t(T) / t(1) of a forward-cost curve (rows of benchmarks.forward_cost's json: batch,
  tokens, ms) at `tokens` (`cost_model.curve_at`: linear between the measured T); None
  outside the measured range or without the batch."""
  curve = {r['tokens']: r['ms'] for r in curve_rows if r['batch'] == batch}
  if 1 not in curve or not 1 <= tokens <= max(curve):
    return None
  return cost_model.curve_at(curve, tokens) / curve[1]


IDEAL_NOTE = (
    '\nloop tau = AR\'s decode-loop iterations / the method\'s (a batch runs until its slowest '
    'row is done, so at batch > 1 it is below tau, the rows\' mean; at batch 1 it is tau '
    'without the prefill). T = 1 + drafted tokens per step (a mean where the draft length '
    'varies). t(T) / t(1): one cached forward of the target over T new tokens per row against '
    'one over 1 (its trained weights, the same batch size, a context of the prompt plus half '
    'the new tokens; over T with the step\'s mask, causal or tree, over 1 causal as AR\'s '
    'step), timed in turns with the row\'s own passes (best of as many runs; linear '
    'between the integers either side of T). ideal = loop tau x t(1) / t(T): the speedup if a '
    'step cost exactly one target forward, drafting, trees and bookkeeping free, so measured / '
    'ideal is about the share of a step spent in the target forward (prefill included in '
    'measured, not in ideal). Rows without drafted tokens per step have no ideal.')


def ideal_cells(row: dict[str, Any], ar_row: dict[str, Any], batch: int,
                curve_rows: list[dict[str, Any]]) -> list[str]:
  """The cells loop tau, step tokens T, t(T) / t(1), ideal and measured / ideal of a row:
  t(T) / t(1) from the row's own forward probes, else (marked *) from `curve_rows` (a
  benchmarks.forward_cost json's rows), else '-'."""
  loop_tau = row.get('loop_tau')
  if loop_tau is None and ar_row.get('loop_steps') and row.get('loop_steps'):
    loop_tau = harness.loop_tau(ar_row['loop_steps'], row['loop_steps'])
  if 'drafted_per_step' not in row or loop_tau is None:
    return ['-' if loop_tau is None else f'{loop_tau:.2f}', '-', '-', '-', '-']
  steps_T = 1 + row['drafted_per_step']
  ratio, mark = None, ''
  if 'forward_ms' in row:
    curve = {int(T): ms for T, ms in row['forward_ms']}
    ratio = cost_model.curve_at(curve, steps_T) / curve[1]
  elif curve_rows:
    ratio, mark = curve_ratio(curve_rows, batch, steps_T), '*'
  if ratio is None:
    return [f'{loop_tau:.2f}', f'{steps_T:.1f}', '-', '-', '-']
  ideal = cost_model.ideal_speedup(loop_tau, 1.0, ratio)
  return [f'{loop_tau:.2f}', f'{steps_T:.1f}', f'{ratio:.2f}{mark}', f'{ideal:.2f}x',
          f"{row.get('speedup', 1.0) / ideal:.2f}"]


def report(raw_dir: str = RAW_DIR, out_name: str = 'speculative', curve: str = '') -> str:
  """Merges the raw measurements of raw_dir into benchmarks/results/<name>.md and a plot.

  Each speculative row with forward probes (`run`'s default) gets its loop tau, its step's
  token count T (1 + drafted tokens per step) and the ideal speedup loop tau * t(1) / t(T)
  (`ideal_cells`; `cost_model.ideal_speedup`: a step that costs exactly one target forward
  over its T tokens, drafting free). curve: a benchmarks.forward_cost json of the same
  target's shapes and device, for the rows measured without probes."""
  runs = _merged_runs(raw_dir)
  curve_rows, curve_source = [], ''
  if curve:
    with open(curve) as f:
      curve_rows = json.load(f)['rows']
    presets = {r['preset'] for r in curve_rows}
    if len(presets) != 1:
      raise ValueError(f'--curve {curve}: one preset expected, found {sorted(presets)}.')
    curve_source = os.path.basename(curve)
  body = ['## Goals (temperature 0)\n',
          common.markdown_table(['goal', 'measured', 'status'], goals(runs)), '']
  # Summary: tau and speedup of every method in every setting.
  settings = [f"t{r['temperature']:g} b{r['batch_size']}" for r in runs]
  names = list(dict.fromkeys(n for r in runs for n in r['rows']))
  summary = []
  for n in names:
    line = [n]
    for r in runs:
      row = r['rows'].get(n)
      line.append('-' if row is None else
                  f"{row['tau']:.2f} / {row.get('speedup', 1.0):.2f}x"
                  + (' (!)' if harness.implausible(row) else ''))
    summary.append(line)
  body += ['## Summary: tau / speedup against AR\n',
           'tau = generated tokens / target forwards (prefill and bonus token counted); '
           'speedup = tokens/s over AR tokens/s timed alternately in the same process. '
           '(!) marks a speedup above tau, which a step that drafts and then runs the target '
           'over more tokens than AR cannot reach: load from other jobs on the shared machine '
           'during the AR passes, not the method. A setting may combine several runs '
           '(`--part`: drafters trained later, re-measurements); a later run\'s row replaces '
           'an earlier one of the same method, and every contributing command is listed under '
           'its setting.\n',
           common.markdown_table(['method'] + settings, summary), '']
  for r in runs:
    cmds = r.get('commands', [r['provenance']])
    body.append(f"## temperature {r['temperature']:g}, batch {r['batch_size']}\n\n"
                f"{r['prompts']} held-out prompts, {r['max_new_tokens']} new tokens each.\n")
    for c in cmds:
      body.append(common.with_commit_line(c) + '\n')
    header = ['method', 'tau', 'acceptance by position (d=1..8)', 'target fwd/token',
              'other fwd/token', 'tokens/s', 'AR tokens/s', 'speedup']
    probed = any('forward_ms' in row for row in r['rows'].values())
    with_ideal = bool(curve_rows) or probed
    if with_ideal:
      header += ['loop tau', 'step tokens T', 't(T) / t(1)', 'ideal', 'measured / ideal']
    if r['temperature'] == 0:
      header.append('= AR')
    table = []
    for name, row in r['rows'].items():
      acc = ' '.join(f'{a:.2f}' for a in row.get('acceptance_by_position', [])[:8])
      per_token = lambda k: (f"{row[k] / row['generated']:.3f}" if k in row else '-')
      line = [name, f"{row['tau']:.2f}", acc or '-',
              per_token('target_forwards'), per_token('other_forwards'),
              f"{row['tokens_per_s']:.0f}",
              f"{row.get('ar_tokens_per_s', row['tokens_per_s']):.0f}",
              f"{row.get('speedup', 1.0):.2f}x" + (' (!)' if harness.implausible(row) else '')]
      if with_ideal:
        line += ideal_cells(row, r['rows'].get('ar', {}), r['batch_size'], curve_rows)
      if r['temperature'] == 0:
        line.append({True: 'yes', False: 'NO', None: '-'}[row.get('equals_ar')])
      table.append(line)
    body.append(common.markdown_table(header, table))
    if with_ideal:
      from_curve = any(cell.endswith('*') for line in table for cell in line[1:])
      body.append(IDEAL_NOTE + (f' Rows marked * take t(T) / t(1) from the forward-cost curve '
                                f'{curve_source} (random weights of the same shapes, same '
                                'device, timed in a run of its own).' if from_curve else ''))
    if r['skipped']:
      body.append('\nSkipped: ' + '; '.join(r['skipped']))
    if r.get('note'):
      body.append('\n' + r['note'])
    body.append('')
  plot = _plot(runs, out_name)
  if plot:
    body.append(f'![acceptance by position]({os.path.basename(plot)})')
  return common.write_results(out_name, 'Speculative decoding', '\n'.join(body))


def _plot(runs, out_name: str = 'speculative') -> str | None:
  try:
    plt = common.pyplot()
  except ImportError:
    return None
  chosen = [r for r in runs if r['batch_size'] == 1] or runs[:1]
  if not chosen:
    return None
  fig, axes = plt.subplots(1, len(chosen), figsize=(7 * len(chosen), 5), squeeze=False)
  for ax, r in zip(axes[0], chosen):
    colours = plt.get_cmap('tab20').colors
    for i, (name, row) in enumerate(r['rows'].items()):
      acc = row.get('acceptance_by_position')
      if acc:
        ax.plot(range(1, len(acc) + 1), acc, marker='os^v'[i % 4], label=name,
                color=colours[i % len(colours)], linestyle='-' if i < 10 else '--')
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel('draft position d')
    ax.set_ylabel('share of steps accepting >= d drafted tokens')
    ax.set_title(f"Acceptance by position (temperature {r['temperature']:g}, "
                 f"batch {r['batch_size']})")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # rows without acceptance draw no line
      ax.legend(fontsize=7)
  path = os.path.join(common.RESULTS_DIR, f'{out_name}_acceptance.png')
  fig.savefig(path, dpi=110, bbox_inches='tight')
  plt.close(fig)
  return path


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--target', default='runs/spec/target')
  p.add_argument('--draft', default='runs/spec/draft')
  p.add_argument('--medusa', default='runs/spec/medusa')
  p.add_argument('--mtp', default='runs/spec/mtp')
  p.add_argument('--kangaroo', default='runs/spec/kangaroo')
  p.add_argument('--eagle3', default='runs/spec/eagle3')
  p.add_argument('--dtype', default='', choices=['', 'float32', 'bfloat16'],
                 help='cast every run to this compute and weight dtype (default: as trained)')
  p.add_argument('--temperature', type=float, default=0.0)
  p.add_argument('--batch_size', type=int, default=1)
  p.add_argument('--prompts', type=int, default=8)
  p.add_argument('--prompt_chars', type=int, default=200)
  p.add_argument('--max_new_tokens', type=int, default=128)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--methods', default='', help='comma-separated subset of ' + ', '.join(METHODS))
  p.add_argument('--part', default='',
                 help='suffix of the raw file name (e.g. _heads): a separate file for extra '
                      'methods of the same setting, merged by --report')
  p.add_argument('--merge', action='store_true',
                 help='add/replace these methods in an existing raw file of the same setting')
  p.add_argument('--probes', type=int, default=1,
                 help='1: time target forwards over 1 and over the step\'s T tokens in turns '
                      'with each method\'s passes (the ideal speedup of its row); 0: none')
  p.add_argument('--report', action='store_true', help='merge raw results into the .md')
  p.add_argument('--curve', default='',
                 help='--report: a benchmarks.forward_cost json of the target (one preset) '
                      'for the ideal speedup of each row')
  p.add_argument('--raw_dir', default=RAW_DIR,
                 help='where raw results go; keep one folder per device (the report of '
                      'folder X is benchmarks/results/X.md, speculative.md for the default)')
  args = p.parse_args()
  if args.report:
    name = os.path.basename(os.path.normpath(args.raw_dir))
    print(report(args.raw_dir, 'speculative' if name == 'speculative_raw' else name,
                 curve=args.curve))
    return
  print(run(args))


if __name__ == '__main__':
  main()
