"""Where a decoding step's time goes: target forward, drafter models, everything else.

  python -m benchmarks.step_cost --workdir=runs/tiny                  # the README's model
  python -m benchmarks.step_cost --preset=mem --batches=1             # memory-bound, random

For each decoder and batch size, on the same prompts and in one process, by timing the
same decoding loop with models replaced by no-op stand-ins (`cost_model.NoopModel`: same
shapes, only the cache's slot bookkeeping, every input read so that preparing it is not dead
code):
  step       one loop iteration of the decoder as it is: (time to generate N tokens - time
             to generate 1) / (loop iterations between them), best of `--repeats` passes;
  target     step - (the step with the target a no-op): every target call of the step, in
             the loop (self-speculative drafting, the target's own layers, included);
  drafter    (the step with the target a no-op) - (the step with every model a no-op): the
             draft models and the draft modules a decoder runs itself (Medusa heads, MTP
             modules, Kangaroo adapter, EAGLE and Chimera layers: `cost_model.
             noop_draft_modules`); 0 without one; the oracle draft of draft-model rows costs
             ~0. Drafts made inside the target's forward (PPD's prompt tokens, masked-input
             MTP's masks) are target time;
  other      the step with every model a no-op: drafting logic, tree building, masks,
             verification, cache gather/commit, bookkeeping and the loop itself.
The four runs are separate measurements; the columns add up to the step by construction
(the published table is checked to, after rounding). `other / step` is the overhead share
(goal <= 25% on tiny, <= 10% on a memory-bound target). Beside it, the forward-cost curve at
the step's token count (the target's forward timed on its own, benchmarks.cost_model) and
the in-loop target over it; tau, the speedup over AR in the same run and the ideal speedup
tau * t_AR / t_fwd(T) the curve allows. Writes benchmarks/results/step_cost_<name>.md/.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import workbench
from benchmarks import common
from benchmarks import cost_model
from benchmarks import harness
from benchmarks import oracle
import data
from decoding import Models, SamplingConfig, registry
from models import chimera as chimera_lib
from models import draft_vocab as draft_vocab_lib
from training import objectives
from workdir import loading

DEFAULT_DECODERS = ('ar,prompt_lookup,token_recycling,jacobi,lookahead,layerskip,del,kangaroo,'
                    'medusa,mtp,speculative:gamma=4,speculative:tree=static:tree_nodes=16,'
                    'spec_dynamic:tree_nodes=16,'
                    'speculative:tree=static:branching=4/1/1:verifier=kseq')
SUM_TOLERANCE = 0.10


def step_tokens(decoder, models: Models) -> int:
  """Tokens of the step's target forward: 1 for AR, the tree size for speculative ones."""
  if decoder.name == 'ar':
    return 1
  get = getattr(decoder, 'get_drafter', None)
  if get is None:
    raise ValueError(f'No step size known for decoder {decoder.name!r}.')
  return get().resolve(models).max_nodes


def is_draft_model(decoder) -> bool:
  """Whether the decoder drafts with a separate draft model (speculative, spec_dynamic, ...)."""
  get = getattr(decoder, 'get_drafter', None)
  return get is not None and get().kind == 'model'


# Decoders whose drafter is params of the run (extras): (configs module, argument) of the
# training recipe that makes them. A run without them gets the recipe's initial params: a
# step's time does not depend on their values.
EXTRAS_RECIPES = {'medusa': ('spec_heads', 'medusa'), 'mtp': ('spec_heads', 'mtp'),
                  'kangaroo': ('spec_heads', 'kangaroo'), 'eagle3': ('spec_heads', 'eagle3'),
                  'eagle1': ('spec_heads', 'eagle1'), 'chimera': ('spec_heads', 'chimera'),
                  'mask_mtp': ('mask_mtp', ''), 'ppd': ('ppd', '')}


# Decoders whose drafter may score a reduced vocabulary (`models.draft_vocab`).
DRAFT_VOCAB_NAMES = ('eagle3', 'eagle1', 'medusa', 'mtp')


# Decoders that take a decode-time draft vocabulary as a setting (`draft_vocab=N`, FR-Spec;
# draft models too, but here the oracle draft, which has no head, stands in for them).
DECODE_TIME_VOCAB_NAMES = ('layerskip', 'kangaroo', 'del')


def with_draft_vocabs(decoders: str, draft_vocabs: str) -> list[tuple[str, int]]:
  """(decoder spec, draft vocabulary size) rows: each of `DRAFT_VOCAB_NAMES` once per size of
  `draft_vocabs` (comma-separated; 0 = the whole vocabulary), each of
  `DECODE_TIME_VOCAB_NAMES` once per size with the size as its `draft_vocab` setting (and 0
  here), every other decoder once."""
  vocabs = [int(v) for v in str(draft_vocabs).split(',')]
  rows = []
  for spec in decoders.split(','):
    name = registry.parse_spec(spec)[0]
    if name in DRAFT_VOCAB_NAMES:
      rows += [(spec, v) for v in vocabs]
    elif name in DECODE_TIME_VOCAB_NAMES:
      rows += [(spec + (f':draft_vocab={v}' if v else ''), 0) for v in vocabs]
    else:
      rows.append((spec, 0))
  return rows


def vocab_label(label: str, vocab: int) -> str:
  return label + (f' (draft vocabulary {vocab})' if vocab else '')


def recipe_extras(name: str, model, depth: int, rng: jax.Array,
                  draft_vocab: int = 0) -> dict[str, Any]:
  """The initial extra params of decoder `name`'s training recipe for `model`, with at
  least `depth` heads / masks / prompt tokens where the recipe counts them. `draft_vocab` N >
  0: EAGLE drafts, Medusa heads and MTP modules over a reduced vocabulary of N tokens (ids
  0 .. N-1: speed only; a trained drafter counts its N commonest tokens, `spec.draft_vocab`)."""
  module, arg = EXTRAS_RECIPES[name]
  c = importlib.import_module(f'configs.{module}').get_config(arg)
  if c.spec.get('heads', 0):
    c.spec.heads = max(int(c.spec.heads), depth)
  if name == 'chimera':  # its recipe copies the trained target's output layer into the heads
    init = lambda r: {chimera_lib.CHIMERA: chimera_lib.init_params(model.cfg, c.spec.heads, r)}
  else:
    init = objectives.make_objective(c.objective, model, c).extras
  extras = jax.jit(init)(rng)  # one program, not hundreds of small eager ops
  if draft_vocab and name in DRAFT_VOCAB_NAMES:
    extras[name] = draft_vocab_lib.with_ids(extras[name], np.arange(draft_vocab),
                                            model.cfg.valid_vocab_size or model.cfg.vocab_size)
  return extras


def with_stand_ins(decoder, models: Models, params: dict[str, Any], batches, ar_results,
                   cache_size: int, alpha: float = 0.8,
                   draft_vocab: int = 0) -> tuple[Models, list[dict[str, Any]]]:
  """(models, per-batch params) a decoder needs beyond the target: a draft model becomes the
  oracle draft at acceptance `alpha` (benchmarks.oracle; its forward costs almost nothing,
  so the 'drafter' share of such rows is the drafting logic's), and draft heads, adapters,
  draft layers, prompt tokens or mask LoRAs that the run does not have get their training
  recipe's initial weights (`EXTRAS_RECIPES`; speed does not depend on their values), EAGLE
  drafts, Medusa heads and MTP modules over `draft_vocab` tokens when it is > 0
  (`recipe_extras`)."""
  cfg = models.target.cfg
  drafter = decoder.get_drafter() if hasattr(decoder, 'get_drafter') else None
  extras, per_batch = dict(models.extras), []
  stand_in = {}
  if decoder.name in EXTRAS_RECIPES:
    depth = int(getattr(drafter, 'max_depth', 0) or 0)
    stand_in = recipe_extras(decoder.name, models.target, depth, jax.random.key(0),
                             draft_vocab)
  for (prompt, lens, _), res in zip(batches, jax.device_get(ar_results)):
    p = dict(params)
    if is_draft_model(decoder):
      extras['draft'] = oracle.OracleDraft.for_target(cfg)
      p['draft'] = oracle.oracle_params(oracle.reference_rows(
          prompt, lens, res.tokens_BxN, res.num_generated_B, cache_size), alpha)
    p.update({k: v for k, v in stand_in.items() if k not in p})
    sizes = decoder.draft_vocab_sizes()
    if sizes and draft_vocab_lib.RUN_KEY not in p:  # decode-time sets: ids 0 .. N-1
      p[draft_vocab_lib.RUN_KEY] = {draft_vocab_lib.size_key(n): jnp.arange(n, dtype=jnp.int32)
                                    for n in sizes}
    per_batch.append(p)
  return Models(models.target, extras=tuple(extras.items())), per_batch


def step_is_chain(decoder, models: Models) -> bool:
  """Whether the step's target forward is causal (a chain) rather than a tree's mask."""
  get = getattr(decoder, 'get_drafter', None)
  return get is None or get().resolve(models).is_chain


def step_time(decoder, models, params, batches, *, max_new: int, cache_size: int,
              eos_id: int, pad_id: int, repeats: int,
              compiler_options: dict[str, Any] | None = None,
              compiled: tuple[Any, Any] | None = None) -> tuple[float, dict[str, Any]]:
  """(seconds per loop iteration, summary of the N-token run with `decode_s`: the time of
  the tokens after the first, t(N) - t(1), prefill excluded). `compiler_options`: XLA
  options for its compiles (`harness.compile_decoder`); `compiled`: the (N-token, 1-token)
  `compile_decoder` results of these same arguments when the caller has them already."""
  if compiled is None:
    kw = dict(cache_size=cache_size, eos_id=eos_id, pad_id=pad_id,
              compiler_options=compiler_options)
    compiled = (harness.compile_decoder(decoder, models, params, batches, max_new=max_new,
                                        **kw),
                harness.compile_decoder(decoder, models, params, batches, max_new=1, **kw))
  (fn_n, compile_s), (fn_1, _) = compiled
  harness.timed_pass(fn_n, params, batches)  # warm-up
  harness.timed_pass(fn_1, params, batches)
  t_n = t_1 = float('inf')
  for _ in range(repeats):  # alternate, so both see the same load
    t, res_n = harness.timed_pass(fn_n, params, batches)
    t_n = min(t_n, t)
    t, res_1 = harness.timed_pass(fn_1, params, batches)
    t_1 = min(t_1, t)
  steps = harness.loop_steps(res_n) - harness.loop_steps(res_1)
  summary = harness.summarise(res_n, t_n, compile_s)
  rows = sum(int(p.shape[0]) for p, _, _ in batches)
  summary['decode_s'] = t_n - t_1
  summary['decode_tau'] = (summary['generated'] - rows) / max(summary['target_forwards'] - rows,
                                                              1)
  return (t_n - t_1) / max(steps, 1), summary


def breakdown(decoder, models: Models, params: dict[str, Any], prompts: Sequence[Sequence[int]],
              *, batch: int, max_new: int, cache_size: int, eos_id: int, pad_id: int,
              repeats: int = 3, t_ar: float | None = None,
              curve: dict[int, float] | None = None, ar=None) -> dict[str, Any]:
  """The step-cost breakdown of one decoder (see module docstring); times in seconds.

  `ar`: AR's compiled (N-token, 1-token) programs: then the decoder's decode time is timed
  in passes alternating with AR's, and the row carries the speedup over AR of that window.
  """
  batches = harness.make_batches(prompts, batch, pad_id)
  kw = dict(max_new=max_new, cache_size=cache_size, eos_id=eos_id, pad_id=pad_id,
            repeats=repeats)
  t_step, summary = step_time(decoder, models, params, batches, **kw)
  speedup = loop_tau = None
  if ar is not None:
    ckw = dict(cache_size=cache_size, eos_id=eos_id, pad_id=pad_id)
    pair = harness.measure_decode_pair(
        harness.compile_decoder(decoder, models, params, batches, max_new=max_new, **ckw),
        harness.compile_decoder(decoder, models, params, batches, max_new=1, **ckw),
        ar[0], ar[1], params, batches, repeats=repeats)
    speedup, summary['ar_tokens'] = pair['speedup'], pair['ar_tokens']
    loop_tau = pair['loop_tau']  # at batch > 1 below tau: the loop waits for its slowest row
  extras = [k for k, _ in models.extras]
  # A no-op model's argmax may be the EOS token; those runs never stop early instead (the
  # time per loop iteration does not depend on when rows stop).
  noop_kw = dict(kw, eos_id=-1)
  t_no_target, _ = step_time(decoder, cost_model.noop_models(models, ['target']), params,
                             batches, **noop_kw)
  with cost_model.noop_draft_modules():
    t_other, _ = step_time(decoder, cost_model.noop_models(models, ['target'] + extras),
                           params, batches, **noop_kw)
  T = step_tokens(decoder, models)
  tree = not step_is_chain(decoder, models)
  if curve is None or (T, tree) not in curve:
    curve = dict(curve or {})
    curve[T, tree] = cost_model.forward_time(
        models.target, harness.per_batch(params, len(batches))[0]['target'], batch=batch,
        tokens=T, cache_size=cache_size, context=min(cache_size - T, cache_size // 2),
        explicit_mask=tree, repeats=7)
  t_fwd = curve[T, tree]
  out = dict(decoder=decoder.name, batch=batch, step_tokens=T, tau=summary['decode_tau'],
             other_forwards_per_step=summary['other_forwards'] / max(
                 summary['target_forwards'] - len(prompts), 1),
             step_ms=t_step * 1e3, target_ms=(t_step - t_no_target) * 1e3,
             drafter_ms=(t_no_target - t_other) * 1e3, other_ms=t_other * 1e3,
             target_fwd_ms=t_fwd * 1e3, decode_s=summary['decode_s'],
             generated=summary['generated'], output=summary['tokens'])
  out['sum_ms'] = out['target_ms'] + out['drafter_ms'] + out['other_ms']
  out['overhead_share'] = out['other_ms'] / out['step_ms']
  if loop_tau is not None:
    out['loop_tau'] = loop_tau
  if t_ar is not None:
    out['ideal'] = cost_model.ideal_speedup(summary['decode_tau'] if loop_tau is None
                                            else loop_tau, t_ar, t_fwd)
  if speedup is not None:
    out['speedup'] = speedup
    # Sampled: a lossless decoder matches AR in distribution, not token for token.
    out['equals_ar'] = (summary['tokens'] == summary['ar_tokens']
                        if decoder.sampling.greedy else None)
  return out


def _load(args):
  """(models, params, prompts, eos, pad, name): a trained workdir or a random preset."""
  if args.workdir:
    run = loading.load_model(args.workdir)
    prompts = workbench.read_prompts(run.tokenizer, prompt=None, prompts_file=None,
                                     heldout=args.prompts, prompt_chars=args.prompt_chars,
                                     data_config=run.config['data'])
    name = os.path.basename(os.path.normpath(args.workdir))
    return (Models(run.model), {'target': run.params, **run.extras}, prompts,
            run.tokenizer.eos_id, run.tokenizer.pad_id, name)
  model, params = cost_model.random_model(args.preset, args.dtype)
  tok = data.make_tokenizer('byte')
  prompts = workbench.read_prompts(tok, prompt=None, prompts_file=None, heldout=args.prompts,
                                   prompt_chars=args.prompt_chars,
                                   data_config={'name': 'python_stdlib'})
  # Random weights rarely say EOS; never stopping keeps every row the same length.
  return Models(model), {'target': params}, prompts, -1, tok.pad_id, args.preset


def run(args) -> str:
  models, params, prompts, eos_id, pad_id, name = _load(args)
  if eos_id >= 0:  # a trained model stops at EOS: the oracle needs the whole continuation
    eos_id = -1
  sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
  out, path = f'step_cost_{args.out or name}', ''
  cache = int(-(-(max(map(len, prompts)) + args.max_new_tokens + 128) // 64) * 64)
  kw = dict(max_new=args.max_new_tokens, cache_size=cache, eos_id=eos_id, pad_id=pad_id)
  rows = []
  for batch in [int(b) for b in args.batches.split(',')]:
    batches = harness.make_batches(prompts, batch, pad_id)
    ar = registry.build('ar', sampling=sampling)
    t_ar, ar_sum = step_time(ar, models, params, batches, repeats=args.repeats, **kw)
    ar_fns = harness.compile_decoder(ar, models, params, batches, **kw)
    ar_1 = harness.compile_decoder(ar, models, params, batches, **dict(kw, max_new=1))
    _, ar_results = harness.timed_pass(ar_fns[0], params, batches)
    curve = {}
    for spec, vocab in with_draft_vocabs(args.decoders, getattr(args, 'draft_vocabs', '0')):
      dec_name, settings = registry.parse_spec(spec)
      dec = registry.build(dec_name, settings, sampling=sampling)
      if is_draft_model(dec):  # a draft model: the oracle stands in
        dec = registry.build(dec_name, dict(settings, draft_workdir='oracle'), sampling)
      sub_models, sub_params = with_stand_ins(dec, models, params, batches, ar_results,
                                              cache, draft_vocab=vocab)
      r = breakdown(dec, sub_models, sub_params, prompts, batch=batch, repeats=args.repeats,
                    t_ar=t_ar, curve=curve, ar=(ar_fns, ar_1), **kw)
      r['decoder'] = vocab_label(registry.spec_label(dec_name, settings), vocab)
      curve[r['step_tokens'], not step_is_chain(dec, sub_models)] = r['target_fwd_ms'] / 1e3
      r.pop('output')
      r['ar_step_ms'] = t_ar * 1e3
      rows.append(r)
      path = _write(rows, out, name, sampling)  # after every row: a run cut short keeps them
      print(f"B={batch} {r['decoder']}: step {r['step_ms']:.3f} ms = target "
            f"{r['target_ms']:.3f} (alone {r['target_fwd_ms']:.3f}) + drafter "
            f"{r['drafter_ms']:.3f} + other {r['other_ms']:.3f}; tau {r['tau']:.2f}, "
            f"{r['speedup']:.2f}x AR (ideal {r['ideal']:.2f}x)", flush=True)
  return path


def _write(rows, out: str, name: str, sampling: SamplingConfig = SamplingConfig()) -> str:
  os.makedirs(common.RESULTS_DIR, exist_ok=True)
  with open(os.path.join(common.RESULTS_DIR, f'{out}.json'), 'w') as f:
    json.dump({'provenance': common.provenance(), 'sampling': str(sampling), 'rows': rows}, f,
              indent=1)
  return report(rows, out, name, sampling)


def split_failed(row: dict[str, Any], tolerance: float = 0.05) -> bool:
  """Whether a component of the row's split is below zero by more than `tolerance` of its
  step: the runs with models made no-ops then did different work (a decoder that picks its
  exit or draft length from acceptance, such as DEL, drafts otherwise when the models say
  nothing), so the split does not hold for that row; its step time does."""
  floor = -tolerance * row['step_ms']
  return min(row['target_ms'], row['drafter_ms'], row['other_ms']) < floor


def report(rows, out: str, name: str, sampling: SamplingConfig = SamplingConfig()) -> str:
  header = ['decoder', 'batch', 'T', 'tau', 'loop tau', 'step ms', 'target ms', 'drafter ms',
            'other ms',
            'other share', 'target alone ms', 'in loop / alone', 'speedup vs AR', 'ideal',
            'measured / ideal', '= AR']
  table = []
  split_fails = False
  for r in rows:
    bad = split_failed(r)
    split_fails |= bad
    table.append([r['decoder'], r['batch'], r['step_tokens'], f"{r['tau']:.2f}",
                  f"{r['loop_tau']:.2f}" if 'loop_tau' in r else '-',
                  f"{r['step_ms']:.3f}", f"{r['target_ms']:.3f}", f"{r['drafter_ms']:.3f}",
                  f"{r['other_ms']:.3f}",
                  f"{100 * r['overhead_share']:.0f}%" + (' (split fails)' if bad else ''),
                  f"{r['target_fwd_ms']:.3f}", f"{r['target_ms'] / r['target_fwd_ms']:.2f}",
                  f"{r['speedup']:.2f}x" + (' (!)' if harness.implausible(r) else ''),
                  f"{r['ideal']:.2f}x", f"{r['speedup'] / r['ideal']:.2f}",
                  {True: 'yes', False: 'NO', None: '-'}[r['equals_ar']]])
  body = (f'Model: `{name}`. Decode phase (prefill excluded); every time is the best of '
          'several passes, passes alternating. Times per loop iteration (one draft -> verify '
          '-> commit step; for AR one token); tau = tokens after the first / target forwards '
          'after the prefill (the rows\' mean); loop tau = AR\'s decode-loop iterations / the '
          'decoder\'s (a batch runs until its slowest row is done, so at batch > 1 it is below '
          'tau; at batch 1 it is tau); speedup = AR decode time / decode time. "target": the '
          'step minus '
          'the step with the target a no-op (every target call, in the loop); "drafter": the '
          'same for the draft models and the draft modules the decoder runs itself (heads, '
          'adapter, EAGLE and Chimera layers; draft-model rows use the oracle draft of '
          'benchmarks/oracle.py at alpha 0.8, other drafters their training recipe\'s '
          'initial weights: speed only); '
          '"other": the step with every model a no-op (drafting logic, trees, masks, '
          'verification, cache commit, bookkeeping, loop); target + drafter + other = step. '
          '"target alone": the forward-cost curve at T (the forward timed on its own, with the '
          'mask kind of the step); "in loop / alone" compares the two. ideal = loop tau x AR '
          'step / target alone (rows measured before loop tau was recorded: tau). (!) marks a '
          'speedup above tau or loop tau (load on the machine, not the method). '
          + ('Temperature 0; "= AR": the tokens equal AR\'s.' if sampling.greedy else
             f'Sampled ({sampling}): a lossless decoder follows AR\'s distribution, not its '
             'tokens, so "= AR" is not checked (-); the draft-model rows\' oracle proposes the '
             'text of AR\'s own sampled run.')
          + (' "split fails": a component of the row is below zero, so the runs with models '
             'made no-ops did different work (a decoder that picks its exit or draft length '
             'from acceptance drafts otherwise when the models say nothing): its split does '
             'not hold; its step time does.' if split_fails else '')
          + '\n\n' + common.markdown_table(header, table))
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
  ap.add_argument('--repeats', type=int, default=5)
  ap.add_argument('--temperature', type=float, default=0.0,
                  help='0: greedy (outputs checked against AR); > 0: sampled')
  ap.add_argument('--top_k', type=int, default=0)
  ap.add_argument('--top_p', type=float, default=1.0)
  ap.add_argument('--draft_vocabs', default='0',
                  help='EAGLE, Medusa, MTP, LayerSkip, Kangaroo and DEL rows without a trained '
                       'drafter: one per draft vocabulary size, comma-separated (0 = the whole '
                       'vocabulary; N = ids 0 .. N - 1; the early exits as draft_vocab=N)')
  ap.add_argument('--out', default='', help='results name suffix (default: the model name)')
  print(run(ap.parse_args()))


if __name__ == '__main__':
  main()
