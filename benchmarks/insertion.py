"""Insertion language models (ILM) against AR and masked diffusion (MDLM): a planning task at
equal training budget, and in-place infilling of unknown length.

  python -m benchmarks.insertion --runs=runs/diffusion
  python -m benchmarks.insertion --ar_run=A --mdlm_run=M --step=1500   # other baselines
  python -m benchmarks.insertion --parts=sudoku4 --step=8000 --ilm_step=24000  # ILM budget x3
  python -m benchmarks.insertion --examples=16 --out=t      # smoke

MEASURES QUALITY AND FORWARDS PER TOKEN, NOT SPEED. Greedy everywhere.

sudoku4 (planning): the runs `sudoku4_ilm` (configs/diffusion_tasks.py:sudoku4,ilm),
`sudoku4_ar` (:sudoku4,ar) and `--mdlm_run` (:sudoku4,mdlm), restored at the same step
`--step` (default: the newest step all three have) of the same preset schedule, so each has
seen the same rows x steps. Decoders: 'insertion' (one (gap, token) per forward, until the
stop signal), 'ar', 'llada' one token per step (confidence order, block = the whole answer).
Solved = a valid grid that keeps every clue (`sudoku.is_valid_solution`); the table adds
where answers go wrong (`sudoku.diagnose`): a full grid at all, one that keeps the clues,
one that follows the rules.

star3, star2 (planning, the ILM paper's own task; e.g. `--parts=star2`): path-star graphs
(data/tasks/stargraph.py; star3: degree 3, arms of 4 nodes; star2: degree 2, arms of 2), the
runs RUNS/TASK_ilm, TASK_ar and TASK_mdlm (configs/diffusion_tasks.py:TASK,KIND) at `--step`
(default: the newest step all three have), the same three decoders. Solved = the path from
the centre to the goal; the table adds where answers go wrong (`stargraph.diagnose`): the
first step after the centre (the one choice that needs planning left to right), whether it
follows the edges at all, and whether it has the right length, start and goal (copied from
the prompt). Other parts than the default pair write insertion_<parts>_<device> unless --out.

progression (infilling of unknown length): held-out 7-term arithmetic progressions with 1-3
whole terms cut from the middle (`infilling.cut_middle`, at least 2 terms kept each side).
  ILM (`progression_ilm`): the partial row is the prompt, 'insertion' with insert_from=1
    (any gap after <sep>); nothing says how many tokens are missing.
  MDLM (`progression_mdlm`), length given: the missing span is k <mask> tokens, k = the true
    length (an oracle ILM does not need), one token per forward, most confident first.
  MDLM, length guessed: k = the most frequent missing length among the examples (what a
    user without the length could do); right only where the guess is.
  MDLM, length picked by its likelihood: every length seen among the examples is filled,
    and each row keeps the fill the MDLM itself finds likeliest (the log-probability of the
    tokens it placed, in the order it placed them: in total, or per token); its forwards
    count every candidate's fill.
Solved = the filled row equals the original; "length right" = as many tokens as missing.
Writes benchmarks/results/insertion_<device>.md and .json.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks import diffusion as diffusion_bench
from benchmarks import forward_cost
from data.tasks import exact_match
from data.tasks import infilling
from data.tasks import stargraph
from data.tasks import sudoku
import workbench
from workbench import Workbench
from workdir import checkpoint as checkpoint_lib


def common_step(paths: list[str]) -> int:
  """The newest checkpoint step every run has."""
  steps = None
  for p in paths:
    ckpt = checkpoint_lib.Checkpointer(os.path.abspath(p), read_only=True, async_save=False)
    try:
      have = set(ckpt.all_steps())
    finally:
      ckpt.close()
    steps = have if steps is None else steps & have
  if not steps:
    raise SystemExit(f'No checkpoint step shared by {paths}.')
  return max(steps)


def load(path: str, step: int) -> Workbench:
  bench = Workbench.load(path, step=step)
  diffusion_bench.LOADED[bench.name] = workbench.describe_run(bench)
  return bench


def rate(rows, stats, ok) -> dict:
  gen = max(stats.generated, 1)
  return dict(solved=100.0 * float(np.mean(ok)), forwards_per_token=stats.target_forwards / gen,
              forwards=stats.target_forwards, tokens=stats.generated, n=len(ok))


PLANNING = ('sudoku4', 'star3', 'star2')  # planning parts: task names (configs/diffusion_tasks.py)


def diagnosis(task_name: str):
  """(diagnose(prompt, answer) -> {key: bool}, [(key, column header)]) of a planning task:
  where its answers go wrong."""
  if task_name.startswith('star'):
    return stargraph.diagnose, [('ends', 'ends right %'), ('first_step', 'first step right %'),
                                ('walk', 'follows the edges %')]
  return sudoku.diagnose, [('grid', 'full grid %'), ('clues', 'keeps the clues %'),
                           ('valid', 'valid grid %')]


def planning_part(args, task_name: str) -> list[dict]:
  """ILM, AR and MDLM on one planning task at the same training step (module docstring)."""
  paths = {'ILM': os.path.join(args.runs, f'{task_name}_ilm'),
           'AR': args.ar_run if task_name == 'sudoku4' else os.path.join(args.runs,
                                                                         f'{task_name}_ar'),
           'MDLM': args.mdlm_run if task_name == 'sudoku4' else os.path.join(
               args.runs, f'{task_name}_mdlm')}
  step = args.step or common_step(list(paths.values()))
  steps = {'ILM': args.ilm_step or step, 'AR': step, 'MDLM': step}
  task = exact_match.get(task_name)
  pairs = exact_match.examples(task, args.examples, seed=args.seed)
  max_new = task.max_answer_chars + 1
  out = []
  for label, name, settings in (('ILM', 'insertion', {}), ('AR', 'ar', {}),
                                ('MDLM', 'llada', dict(tokens_per_step=1, ordering='confidence',
                                                       block_size=max_new))):
    bench = load(paths[label], steps[label])
    tok = bench.tokenizer
    prompts = [exact_match.prompt_ids(tok, p) for p, _ in pairs]
    dec = bench.decoder(name, settings=settings)
    rows, stats = bench.run_one(dec, prompts, max_new_tokens=max_new, batch_size=64)
    answers = [tok.decode([t for t in r.tokens if t != tok.eos_id]) for r in rows]
    ok = [task.score(p, a) for (p, _), a in zip(pairs, answers)]
    # where the answers go wrong (the task's diagnose: stargraph's or sudoku's)
    diag = [diagnosis(task_name)[0](p, a) for (p, _), a in zip(pairs, answers)]
    extra = {k: 100.0 * float(np.mean([d[k] for d in diag])) for k in diag[0]}
    out.append(dict(part=task_name, model=label, run=bench.name, step=steps[label], decoder=name,
                    **rate(rows, stats, ok), **extra))
    print(out[-1], flush=True)
  return out


def infill_examples(n: int, seed: int) -> list[tuple[str, str, str, str]]:
  """(answer, left, missing, right) for n held-out progressions."""
  rng = np.random.default_rng([seed, 17])
  return [(a, *infilling.cut_middle(a, rng)) for _, a in
          exact_match.examples(exact_match.get('progression'), n, seed=seed)]


@functools.partial(jax.jit, static_argnames=('model', 'steps', 'mask_id'))
def _mdlm_fill(model, params, tokens_BxT, *, steps: int, mask_id: int):
  """Fills the <mask> entries of full rows, one per forward, most confident first (SUBS);
  rows with no mask left stop counting. Returns (rows [B, T], forwards per row [B], log-prob
  of the fill [B]: the sum over its steps of the log-probability of the token it placed,
  i.e. the fill's likelihood under the model in the order it was filled)."""
  def body(_, carry):
    tok, fwd, lp = carry
    masked = tok == mask_id
    logits = model.apply({'params': params}, tok, attn_mask='bidirectional').logits_BxTxV
    logits = logits.astype(jnp.float32).at[..., mask_id].set(-jnp.inf)
    logp = jax.nn.log_softmax(logits, -1)
    conf = jnp.where(masked, logp.max(-1), -jnp.inf)
    pos = jnp.argmax(conf, 1)
    b = jnp.arange(tok.shape[0])
    any_masked = masked.any(1)
    new = jnp.where(any_masked, jnp.argmax(logits[b, pos], -1), tok[b, pos])
    lp = lp + jnp.where(any_masked, logp[b, pos, new], 0.0)
    return tok.at[b, pos].set(new.astype(tok.dtype)), fwd + any_masked, lp
  B = tokens_BxT.shape[0]
  return jax.lax.fori_loop(0, steps, body, (tokens_BxT, jnp.zeros((B,), jnp.int32),
                                            jnp.zeros((B,), jnp.float32)))


def pick_lengths(candidates: list[int], logp_KxN: np.ndarray, per_token: bool) -> np.ndarray:
  """[N] index into `candidates` of each row's most likely fill: the largest log-probability
  of the fill (`per_token`: divided by the candidate's length), the first on a tie."""
  score = np.asarray(logp_KxN, np.float64)
  if score.shape[0] != len(candidates):
    raise ValueError(f'{len(candidates)} candidate lengths but {score.shape[0]} score rows.')
  if per_token:
    score = score / np.asarray(candidates, np.float64)[:, None]
  return np.argmax(score, axis=0)


def mdlm_infill(bench: Workbench, examples, lengths: list[int]
                ) -> tuple[list[str], np.ndarray, np.ndarray]:
  """(filled rows as text, [N] forwards per row, [N] log-probability of each fill): k_i
  <mask> tokens in place of example i's missing span, in a training-shaped row (<bos> <sep>
  answer <eos>...)."""
  tok = bench.tokenizer
  T = int(bench.config['data']['seq_len']) + 1
  rows = []
  for (_, left, _, right), k in zip(examples, lengths):
    ids = ([tok.bos_id, tok.special_id('<sep>')] + list(tok.encode(left)) + [tok.mask_id] * k
           + list(tok.encode(right)))
    if len(ids) + 1 > T:
      raise ValueError(f'Row of {len(ids) + 1} tokens does not fit seq_len + 1 = {T}.')
    rows.append(ids + [tok.eos_id] * (T - len(ids)))
  filled, fwd, logp = _mdlm_fill(bench.model, bench.params, jnp.asarray(rows, jnp.int32),
                                 steps=max(lengths), mask_id=tok.mask_id)
  texts = []
  for r in np.asarray(filled):
    body = r[2:].tolist()
    body = body[:body.index(tok.eos_id)] if tok.eos_id in body else body
    texts.append(tok.decode(body))
  return texts, np.asarray(fwd), np.asarray(logp)


def keeps_given(text: str, left: str, right: str) -> bool:
  """Whether a filled row keeps the given terms: it starts with `left`, ends with `right`,
  and the two do not overlap (the filling went into the gap, not into a kept term)."""
  return len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right)


def infill_part(args) -> list[dict]:
  ilm = load(os.path.join(args.runs, 'progression_ilm'), args.infill_step or None)
  mdlm = load(os.path.join(args.runs, 'progression_mdlm'), args.infill_step or None)
  examples = infill_examples(args.examples, args.seed)
  out = []
  tok = ilm.tokenizer
  prompts = [[tok.bos_id, tok.special_id('<sep>')] + list(tok.encode(left + right))
             for _, left, _, right in examples]
  max_missing = max(len(tok.encode(m)) for _, _, m, _ in examples)
  dec = ilm.decoder('insertion', settings=dict(insert_from=1))
  rows, stats = ilm.run_one(dec, prompts, max_new_tokens=max_missing + 4, batch_size=64)
  texts = [tok.decode(r.extra['sequence'][2:r.extra['length']]) for r in rows]
  length_ok = [r.extra['length'] - len(p) == len(tok.encode(m))
               for r, p, (_, _, m, _) in zip(rows, prompts, examples)]
  ok = [t == a for t, (a, _, _, _) in zip(texts, examples)]
  kept = [keeps_given(t, left, right) for t, (_, left, _, right) in zip(texts, examples)]
  out.append(dict(part='infill', model='ILM', run=ilm.name, step=ilm.step,
                  decoder='insertion(insert_from=1)', length='not given',
                  length_right=100.0 * float(np.mean(length_ok)),
                  kept=100.0 * float(np.mean(kept)), **rate(rows, stats, ok)))
  print(out[-1], flush=True)
  true_k = [len(tok.encode(m)) for _, _, m, _ in examples]
  guess = collections.Counter(true_k).most_common(1)[0][0]
  # Every row filled at every length seen (rows are independent): each variant below reads
  # its row i's fill at its length k_i from these.
  candidates = sorted(set(true_k))
  fills = {k: mdlm_infill(mdlm, examples, [k] * len(examples)) for k in candidates}
  variants = [('given (oracle)', true_k, None), (f'guessed ({guess} tokens)',
                                                 [guess] * len(true_k), None)]
  logp = np.stack([fills[k][2] for k in candidates])
  every = sum(int(f[1].sum()) for f in fills.values())  # picking pays for every fill
  for per_token, what in ((False, 'total'), (True, 'per token')):
    pick = pick_lengths(candidates, logp, per_token)
    variants.append((f'picked by its likelihood ({what}, of {candidates})',
                     [candidates[i] for i in pick], every))
  for label, ks, fwd in variants:
    texts = [fills[k][0][i] for i, k in enumerate(ks)]
    if fwd is None:  # only this row's fill at its length
      fwd = int(sum(fills[k][1][i] for i, k in enumerate(ks)))
    n = int(sum(ks))
    ok = [t == a for t, (a, _, _, _) in zip(texts, examples)]
    length_ok = [k == t for k, t in zip(ks, true_k)]
    kept = [keeps_given(t, left, right) for t, (_, left, _, right) in zip(texts, examples)]
    out.append(dict(part='infill', model='MDLM', run=mdlm.name, step=mdlm.step,
                    decoder='one per step (confidence)', length=label,
                    length_right=100.0 * float(np.mean(length_ok)),
                    kept=100.0 * float(np.mean(kept)),
                    solved=100.0 * float(np.mean(ok)), forwards_per_token=fwd / max(n, 1),
                    forwards=fwd, tokens=n, n=len(ok)))
    print(out[-1], flush=True)
  return out


def report(rows: list[dict], args, name: str) -> str:
  se = lambda r: 100 * np.sqrt(r['solved'] / 100 * (1 - r['solved'] / 100) / r['n'])
  inf = [r for r in rows if r['part'] == 'infill']
  body = []
  for task_name in PLANNING:
    part = [r for r in rows if r['part'] == task_name]
    if not part:
      continue
    star = task_name.startswith('star')
    degree, arm = stargraph.DEGREE_ARM[task_name] if star else (0, 0)
    what = (f'path-star graphs (degree {degree}, arms of {arm} nodes; solved = the path from '
            'the centre to the goal)' if star else
            'puzzles (solved = a valid grid that keeps every clue)')
    columns = diagnosis(task_name)[1]
    steps = {r['model']: r['step'] for r in part}
    base_step = steps.get('AR', part[0]['step'])
    if len(set(steps.values())) == 1:
      title = 'equal training budget'
      budget = (f'every model restored at step {base_step} of the same preset schedule (same '
                'rows x steps, same architecture)')
    else:
      title = 'the ILM at a larger training budget'
      budget = (f'the ILM restored at step {steps["ILM"]} ({steps["ILM"] / base_step:.3g} '
                f'times the rows x steps of the others; `--ilm_step`), AR and MDLM at step '
                f'{base_step}, same preset and architecture')
    body += [
        f'## {task_name} (planning), {title}\n\n{part[0]["n"]} held-out {what}, '
        f'seed {args.seed}; {budget}. Greedy. One training run and one seed per model.\n',
        common.markdown_table(
            ['model', 'run (step)', 'decoder', 'solved %', '± (binomial s.e.)']
            + [header for _, header in columns] + ['forwards / token'],
            [[r['model'], f"{r['run']} ({r['step']})", r['decoder'], f"{r['solved']:.1f}",
              f'{se(r):.1f}']
             + [f"{r[k]:.1f}" if k in r else '—' for k, _ in columns]
             + [f"{r['forwards_per_token']:.3f}"] for r in part]), '']
    if star:
      body += ['"ends right": as many nodes as the path, the first the centre and the last the '
               'goal (both copied from the prompt; no edge read); '
               '"first step right": the answer\'s second node is the centre\'s child on the '
               'goal\'s arm, the one choice that needs planning left to right (a guess among '
               f'the centre\'s {degree} children: 1 in {degree}); "follows the edges": the '
               'answer starts at the centre and every step is an edge, whichever arm it takes '
               '(next-token prediction\'s shortcut).\n']
    else:
      body += ['"full grid": as many digits 1-4 as the grid has cells (the format); "keeps the '
               'clues": a full grid with every clue of the puzzle in its place (copying); '
               '"valid grid": every row, column and box holds each digit once, clues aside '
               '(the rules). Solved = keeps the clues and valid.\n']
  if inf:
    body += [
        f'## Infilling of unknown length (progression)\n\n{inf[0]["n"]} held-out 7-term '
        'progressions with 1-3 whole terms cut from the middle. ILM reads the row with the '
        'gap closed and inserts until its stop signal; MDLM needs the number of <mask> '
        'tokens: given (an oracle), guessed (the most frequent missing length), or picked '
        'per row by the MDLM\'s own likelihood of its fill among the lengths seen (in total '
        'or per token; forwards counted over every candidate\'s fill). Solved = '
        'the filled row equals the original; "keeps the given terms": the filled row starts '
        'with the text before the gap and ends with the text after it (the filling went into '
        'the gap; MDLM\'s masks sit there by construction). Greedy; one run, one seed per '
        'model.\n',
        common.markdown_table(
            ['model', 'run (step)', 'missing length', 'solved %', '± (binomial s.e.)',
             'length right %', 'keeps the given terms %', 'forwards / token'],
            [[r['model'], f"{r['run']} ({r['step']})", r['length'], f"{r['solved']:.1f}",
              f'{se(r):.1f}', f"{r['length_right']:.1f}",
              f"{r['kept']:.1f}" if 'kept' in r else '—', f"{r['forwards_per_token']:.3f}"]
             for r in inf]), '']
  body.append('Models:\n\n' + '\n'.join(f'- `{k}`: {v}' for k, v in
                                          sorted(diffusion_bench.LOADED.items())))
  body.append('\nForwards per token: target forwards / generated tokens (ILM: one per '
              'insertion plus the step whose stop signal ends the row; AR: one per token '
              'including <eos>; MDLM one per step: one per filled position). Speed was not '
              'measured (shared, loaded CPU).')
  return common.write_results(name, 'Insertion language models (ILM) against AR and MDLM',
                              '\n'.join(body))


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--runs', default='runs/diffusion')
  ap.add_argument('--ar_run', default='', help='sudoku4 AR run (default RUNS/sudoku4_ar)')
  ap.add_argument('--mdlm_run', default='', help='sudoku4 MDLM run (default RUNS/sudoku4_mdlm)')
  ap.add_argument('--step', type=int, default=0,
                  help='planning parts: the step (0 = the newest all three runs have)')
  ap.add_argument('--ilm_step', type=int, default=0,
                  help='planning parts: restore the ILM at this step instead of --step (a '
                       'larger budget than its baselines; the table says so)')
  ap.add_argument('--infill_step', type=int, default=0, help='progression runs (0 = newest)')
  ap.add_argument('--parts', default='sudoku4,infill',
                  help=f"comma-separated, from {', '.join(PLANNING)}, infill")
  ap.add_argument('--examples', type=int, default=256)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--out', default='', help='results name (default insertion_<device>)')
  args = ap.parse_args(argv)
  args.ar_run = args.ar_run or os.path.join(args.runs, 'sudoku4_ar')
  args.mdlm_run = args.mdlm_run or os.path.join(args.runs, 'sudoku4_mdlm')
  args.parts = [p for p in args.parts.split(',') if p]
  unknown = sorted(set(args.parts) - set(PLANNING) - {'infill'})
  if unknown:
    ap.error(f"Unknown parts {unknown}; choose from {', '.join(PLANNING)}, infill.")
  default_parts = args.parts == ['sudoku4', 'infill']  # other parts: a file of their own
  args.out = args.out or '_'.join(['insertion'] + ([] if default_parts else args.parts)
                                  + [forward_cost.device_tag()])
  return args


def main(argv=None) -> str:
  args = parse_args(argv)
  rows = []
  for task_name in PLANNING:
    if task_name in args.parts:
      rows += planning_part(args, task_name)
  if 'infill' in args.parts:
    rows += infill_part(args)
  os.makedirs(common.RESULTS_DIR, exist_ok=True)
  with open(os.path.join(common.RESULTS_DIR, f'{args.out}.json'), 'w') as f:
    json.dump({'provenance': common.provenance(), 'rows': rows}, f, indent=1)
  path = report(rows, args, args.out)
  print(path)
  return path


if __name__ == '__main__':
  main()
