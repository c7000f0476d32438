"""Our speculative decoders against transformers' assisted generation, on the same weights.

  python -m benchmarks.spec_peer --target=runs/spec/target --draft=runs/spec/draft
  python -m benchmarks.spec_peer --target=runs/gpu/small --draft=runs/gpu/draft \
      --medusa=runs/gpu/medusa --dtype=bfloat16 \
      --best_from=benchmarks/results/speculative_raw_gpu_small/t0_b1.json    # gpu_suite.sh peer

The target and draft runs are exported to Hugging Face format (`models.hf.export_model`, into
a temporary folder) and loaded with transformers (CUDA when torch sees a GPU, else CPU; in
`--dtype`, float32 by default). Then, in one process, greedy, batch 1, on the same held-out
prompts of the code corpus:

  ours            `ar` and `--methods` (names of benchmarks.speculative.METHODS: draft chain,
                  trees, prompt lookup, Medusa / MTP / Kangaroo with their runs, ...), plus
                  the fastest lossless method of a benchmarks.speculative raw file
                  (`--best_from`)
  transformers    `generate()`, assisted generation with `assistant_model=draft`
                  (transformers' default schedule), `prompt_lookup_num_tokens=--pld_tokens`

Every side is warmed up once and timed `--repeats` times over all prompts (best pass kept);
tokens/s counts the tokens each generation produced (each stops at `<eos>`). The report gives
each method's tokens/s over our AR's, the ratios ours / transformers, and how many greedy
continuations equal our AR's token for token (same weights: a check that both sides decode
the same model; exact in float32, near-ties may differ in bfloat16). The issue goals are
ours >= 2.5x our AR and >= 2x assisted generation's tokens/s at batch 1 on a GPU; a CPU run
shows the harness and the ratios of a host-bound regime only. Writes
benchmarks/results/speculative_peer.md (`--name`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any

import jax

import workbench
from benchmarks import common
from benchmarks import harness
from benchmarks import speculative
import data
from decoding import SamplingConfig
from models import hf
from workdir import checkpoint


def _export(loaded, params, out_dir: str) -> None:
  hf.export_model(params, loaded.model_config, out_dir,
                  tokenizer_dir=os.path.join(loaded.workdir, checkpoint.TOKENIZER_DIR),
                  special_ids=loaded.tokenizer.special_ids, special_tokens=data.SPECIAL_TOKENS)


def _ours(args, bench, have, prompts) -> dict[str, dict[str, Any]]:
  """Tokens/s of our AR and of each of `--methods` at batch 1 (one AOT compile each: every
  prompt padded to one width); methods whose runs are missing are skipped."""
  tok = bench.tokenizer
  cache = harness.cache_slots(prompts, args.max_new_tokens)
  batches = harness.make_batches(prompts, 1, tok.pad_id, bucket=harness.one_shape(prompts))
  kw = dict(max_new=args.max_new_tokens, cache_size=cache, eos_id=tok.eos_id, pad_id=tok.pad_id)
  greedy = SamplingConfig(temperature=0.0)
  ar = bench.decoder('ar', greedy)
  setups = {'ar': (ar, *bench.models_for(ar))}
  for name in _method_names(args):
    needs = speculative.METHODS[name][2]
    if any(n not in have for n in needs):
      print(f'ours {name}: skipped (needs {", ".join(needs)})', flush=True)
      continue
    setups[name] = speculative.build_method(name, bench, args.draft, greedy)
  out = {}
  for name, (dec, models, params) in setups.items():
    fns, compile_s = harness.compile_decoder(dec, models, params, batches, **kw)
    harness.timed_pass(fns, params, batches)
    passes = [harness.timed_pass(fns, params, batches) for _ in range(args.repeats)]
    wall = min(t for t, _ in passes)
    r = harness.summarise(passes[0][1], wall, compile_s)
    out[name] = dict(tokens=r['tokens'], generated=r['generated'], wall_s=wall,
                     tokens_per_s=r['generated'] / wall, tau=r['tau'])
    print(f"ours {name}: {out[name]['tokens_per_s']:.1f} tok/s, tau {r['tau']:.2f} "
          f'(compile {compile_s:.1f} s)', flush=True)
  return out


def _method_names(args) -> list[str]:
  """--methods, plus the fastest lossless method of --best_from (a benchmarks.speculative raw
  file) when it is not among them."""
  names = [m.strip() for m in args.methods.split(',') if m.strip()]
  if args.best_from:
    with open(args.best_from) as f:
      rows = json.load(f)['rows']
    cands = [(r['speedup'], n) for n, r in rows.items() if 'speedup' in r
             and r.get('equals_ar', True) and not harness.implausible(r)]
    if cands and max(cands)[1] not in names:
      names.append(max(cands)[1])
  unknown = [m for m in names if m not in speculative.METHODS]
  if unknown:
    raise ValueError(f'Unknown methods {unknown}; choose from {list(speculative.METHODS)}.')
  return names


def _theirs(args, target_dir, draft_dir, prompts, eos_id, pad_id, on_row=None
            ) -> dict[str, dict[str, Any]]:
  """Tokens/s of transformers' generate() variants at batch 1: assisted generation first (the
  goal's peer), then prompt lookup, then plain generate(). `on_row(name, row, version)` is
  called as each finishes (so a run cut short keeps the rows before)."""
  # The peer only: torch and transformers are optional and take ~2 s to import.
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  if device == 'cpu' and jax.default_backend() == 'gpu':
    print('WARNING: torch sees no GPU but jax runs on one: transformers runs on the CPU and '
          'every ratio against it compares two devices.', flush=True)
  dtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16}[args.dtype or 'float32']
  load = lambda d: transformers.AutoModelForCausalLM.from_pretrained(
      d, dtype=dtype).to(device).eval()
  target, draft = load(target_dir), load(draft_dir)
  version = (f'torch {torch.__version__}, transformers {transformers.__version__}, {device}, '
             f'{dtype}')
  base = dict(do_sample=False, max_new_tokens=args.max_new_tokens, eos_token_id=eos_id,
              pad_token_id=pad_id)
  setups = {ASSISTED: dict(assistant_model=draft),
            f'{PLD} (prompt_lookup_num_tokens={args.pld_tokens})':
            dict(prompt_lookup_num_tokens=args.pld_tokens),
            GENERATE: {}}
  inputs = [torch.tensor([p], device=device) for p in prompts]

  def one_pass(kw, ids_list):
    t0, toks = time.perf_counter(), []
    with torch.no_grad():
      for ids in ids_list:
        out = target.generate(ids, attention_mask=torch.ones_like(ids), **base, **kw)
        new = out[0, ids.shape[1]:].tolist()
        if eos_id in new:  # transformers pads finished rows; keep up to and including <eos>
          new = new[:new.index(eos_id) + 1]
        toks.append(new)
    if device == 'cuda':
      torch.cuda.synchronize()
    return time.perf_counter() - t0, toks

  out = {}
  for name, kw in setups.items():
    one_pass(kw, inputs[:1])  # warm-up (one prompt: eager PyTorch has nothing to compile)
    passes = [one_pass(kw, inputs) for _ in range(args.repeats)]
    wall = min(t for t, _ in passes)
    toks = passes[0][1]
    gen = sum(map(len, toks))
    out[name] = dict(tokens=toks, generated=gen, wall_s=wall, tokens_per_s=gen / wall)
    print(f"transformers {name}: {gen / wall:.1f} tok/s", flush=True)
    if on_row:
      on_row(name, out[name], version)
  return out


ASSISTED = 'assisted generation (assistant_model=draft)'
PLD = 'prompt lookup'
GENERATE = 'generate()'


def report(args, ours: dict[str, dict[str, Any]], theirs: dict[str, dict[str, Any]],
           version: str, n_prompts: int) -> str:
  """Writes the results file from the rows measured so far (a side not measured yet, e.g. cut
  by a time limit, is said to be missing); returns its path."""
  ar = ours['ar']
  vs_ar = lambda r: r['tokens_per_s'] / ar['tokens_per_s']
  rows = [['ours', n, r['generated'], f"{r['tau']:.2f}", f"{r['tokens_per_s']:.1f}",
           f'{vs_ar(r):.2f}x' + (' (!)' if common.speedup_above_tau(vs_ar(r), r['tau']) else ''),
           'yes' if r['tokens'] == ar['tokens'] else 'NO'] for n, r in ours.items()]
  rows += [['transformers', n, r['generated'], '-', f"{r['tokens_per_s']:.1f}",
            f'{vs_ar(r):.2f}x', 'yes' if r['tokens'] == ar['tokens'] else 'NO']
           for n, r in theirs.items()]
  best_ours = max(((r['tokens_per_s'], n) for n, r in ours.items()
                   if n != 'ar' and not common.speedup_above_tau(vs_ar(r), r['tau'])),
                  default=None)
  assisted = theirs.get(ASSISTED)
  pld = next((r for n, r in theirs.items() if n.startswith(PLD)), None)
  ratios = []
  if best_ours:
    ratios.append(['best of ours vs our AR', best_ours[1],
                   f"{best_ours[0] / ar['tokens_per_s']:.2f}x"])
    if assisted:
      ratios.append(['best of ours vs assisted generation', best_ours[1],
                     f"{best_ours[0] / assisted['tokens_per_s']:.2f}x"])
  if 'prompt lookup' in ours and pld:
    ratios.append(['ours prompt lookup vs transformers prompt lookup', '',
                   f"{ours['prompt lookup']['tokens_per_s'] / pld['tokens_per_s']:.2f}x"])
  if GENERATE in theirs:
    ratios.append(['ours ar vs transformers generate()', '',
                   f"{ar['tokens_per_s'] / theirs[GENERATE]['tokens_per_s']:.2f}x"])
  on_gpu = 'cuda' in version and jax.default_backend() == 'gpu'
  apart = bool(version) and jax.default_backend() == 'gpu' and 'cuda' not in version
  if not (best_ours and assisted):
    goal_line = 'not measured: ' + ('no method of ours below its tau' if not best_ours else
                                    'assisted generation was not timed in this run') + '.'
  else:
    goal = best_ours[0] / assisted['tokens_per_s']
    goal_line = (f"{'met' if goal >= 2 else 'not met'} ({goal:.2f}x)." if on_gpu else
                 f'not measured: this run is not on a GPU (ratio here {goal:.2f}x).')
  missing = [n for n in (ASSISTED, PLD, GENERATE)
             if not any(m.startswith(n) for m in theirs)]
  same = (f"{sum(a == b for a, b in zip(ar['tokens'], theirs[GENERATE]['tokens']))} of "
          f'{n_prompts}' if GENERATE in theirs else 'not measured')
  dtype = args.dtype or 'as trained'
  body = (f"Peer: {version or 'transformers not reached'}. Greedy, batch 1, {n_prompts} "
          f'held-out prompts, up to {args.max_new_tokens} new tokens, ours in {dtype}, best of '
          f'{args.repeats} timed passes after a warm-up; target `{args.target}`, draft '
          f'`{args.draft}` (exported to HF format for transformers). "vs our AR": tokens/s '
          'over our AR\'s in this run, (!) where above tau (a measurement error, not a '
          'result: such a row is left out of "best of ours"); "= our AR": the greedy tokens '
          'equal our AR decoder\'s (in bfloat16 near-ties may break differently between a '
          '1-token and a T-token forward, or between frameworks).'
          + (f" Not measured in this run (cut short or not reached): {', '.join(missing)}."
             if missing else '')
          + (' **transformers ran on the CPU (torch saw no GPU) while ours ran on the GPU: '
             'the ratios against it compare two devices, not two implementations.**'
             if apart else '') + '\n\n'
          + common.markdown_table(['side', 'method', 'tokens', 'tau', 'tokens/s',
                                   'vs our AR', '= our AR'], rows)
          + '\n\n' + common.markdown_table(['ratio', 'ours', 'value'], ratios)
          + f'\n\ntransformers generate() continuations equal to our AR decoder token for '
          f'token: {same}.\n\n'
          f'Goal (>= 2x assisted generation tokens/s at batch 1, on a GPU): {goal_line}\n')
  return common.write_results(args.name, 'Speculative decoding vs transformers assisted '
                              'generation', body)


def run(args) -> str:
  bench, have = speculative.open_runs(args)
  if 'draft' not in have:
    raise ValueError(f'No draft run in {args.draft!r}: assisted generation needs one.')
  tok = bench.tokenizer
  prompts = workbench.read_prompts(tok, prompt=None, prompts_file=None, heldout=args.prompts,
                                   prompt_chars=args.prompt_chars,
                                   data_config=bench.config['data'])
  ours = _ours(args, bench, have, prompts)
  path = report(args, ours, {}, '', len(prompts))  # ours now: a cut peer keeps them
  theirs: dict[str, dict[str, Any]] = {}

  def on_row(name, row, version):
    nonlocal path
    theirs[name] = row
    path = report(args, ours, theirs, version, len(prompts))

  with tempfile.TemporaryDirectory() as tmp:
    t_dir, d_dir = os.path.join(tmp, 'target'), os.path.join(tmp, 'draft')
    draft = bench.run_of(have['draft'])
    _export(bench.target, bench.params, t_dir)
    _export(draft, draft.params, d_dir)
    _theirs(args, t_dir, d_dir, prompts, tok.eos_id, tok.pad_id, on_row=on_row)
  return path


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--target', default='runs/spec/target')
  p.add_argument('--draft', default='runs/spec/draft')
  p.add_argument('--prompts', type=int, default=8)
  p.add_argument('--prompt_chars', type=int, default=200)
  p.add_argument('--max_new_tokens', type=int, default=128)
  p.add_argument('--medusa', default='', help='a Medusa heads run (for --methods=medusa)')
  p.add_argument('--mtp', default='', help='an MTP modules run (for --methods=mtp)')
  p.add_argument('--kangaroo', default='', help='a Kangaroo adapter run (--methods=kangaroo)')
  p.add_argument('--eagle3', default='', help='an EAGLE-3 run (--methods=eagle3 ...)')
  p.add_argument('--methods', default='draft chain g4,prompt lookup',
                 help='ours besides AR: names of benchmarks.speculative.METHODS')
  p.add_argument('--best_from', default='',
                 help='a benchmarks.speculative raw file: add its fastest lossless method')
  p.add_argument('--dtype', default='', choices=['', 'float32', 'bfloat16'],
                 help='ours: cast the runs to this dtype; transformers loads the export in it '
                      '(default: ours as trained, transformers float32)')
  p.add_argument('--pld_tokens', type=int, default=10)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--name', default='speculative_peer')
  print(run(p.parse_args()))


if __name__ == '__main__':
  main()
