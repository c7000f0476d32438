"""Arbitrage against GlimpRouter and R2R at matched large-model budgets (reasoning tasks).

  python -m benchmarks.latent_arbitrage --tasks=prosqa [--root=runs/latent]   # CPU: ~8 min

The small / large pair of each task is benchmarks/latent.py's routing pair, ROOT/TASK/cot_other
and ROOT/TASK/cot (its `--protocol=cpu` trains them: `test` CoT models, 200 and 1600 steps,
lr 3e-3, batch 32). This script, per task,

1. labels steps (decoding/latent/arbitrage.py) on `rows` training problems (seed 1; the
   evaluation questions use seed 0), along three kinds of greedy rows: the small model's, the
   large model's and a random step router's (half the steps large), so that the labels cover
   the states routing visits at any budget. At each step boundary: the large model completes
   the prefix (v_large), the small model drafts its step and the large model completes that
   (v_small); the task scores the answers; label = v_large - v_small > `margin`;
2. fits the Arbitrage router (routing.py's MLP over the small model's state at the step
   start; class-balanced logistic loss, latent_router.train_router) on 80% of the problems
   and reports balanced accuracy on the other 20% (saved as ROOT/TASK/arbitrage_router.npz,
   for `--decoder=arbitrage --decoder_config.router_path=...`); fits the same way, on the same
   labels, the router of the drafted judge (`judge=drafted`) over the features of each label's
   prefix + the small model's drafted step s_k teacher-forced through the small model
   (arbitrage.drafted_features; saved as ROOT/TASK/arbitrage_drafted_router.npz); fits R2R's
   token router as latent.py does;
3. sweeps each router's threshold at the quantiles of its own signal on the training problems
   that should send `fractions` of steps (tokens, for R2R) to the large model, plus a random
   step router at each Arbitrage budget (`arbitrage:random_fraction`), and the drafted judge
   (`arbitrage (drafted)`, steps of at most step_budget(task) tokens, with its discarded
   draft tokens), on `questions` in-distribution questions (latent.py's evaluation set),
   greedy;
4. writes benchmarks/results/OUT.md / .json and OUT.png (accuracy against the fraction of
   tokens the large model wrote); OUT is `--out`, latent_arbitrage unless given (e.g.
   `--tasks=modsum --out=latent_arbitrage_modsum` keeps the ProsQA / parity file).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common
from benchmarks import latent
from benchmarks import latent_router
from data.tasks import reasoning
from decoding.latent import arbitrage, feedback, routing


def define_flags() -> None:
  """Command-line flags (defined only when run as a script, so the module can be imported)."""
  global _REUSE, _ROWS, _QUESTIONS, _BATCH, _MARGIN, _FRACTIONS, _STEPS, _OUT
  # --root (runs: ROOT/TASK/cot_other = small, ROOT/TASK/cot = large) and --tasks (default
  # prosqa) are benchmarks/latent.py's flags, defined when it is imported.
  _REUSE = flags.DEFINE_bool('reuse', False, 'Take a task\'s measurements from '
                             'ROOT/TASK/arbitrage.json when it exists (written by every run).')
  _ROWS = flags.DEFINE_integer('rows', 512, 'Training problems for the routers.')
  _QUESTIONS = flags.DEFINE_integer('questions', 200, 'Held-out questions (in distribution).')
  _BATCH = flags.DEFINE_integer('batch', 100, 'Decode batch.')
  _MARGIN = flags.DEFINE_float('margin', 0.0, 'Advantage margin of a positive label.')
  _FRACTIONS = flags.DEFINE_list('fractions', ['0.1', '0.25', '0.5', '0.75'],
                                 'Target large-model fractions of the threshold sweeps.')
  _STEPS = flags.DEFINE_integer('router_steps', 400, 'Adam steps of each router (full batch).')
  _OUT = flags.DEFINE_string('out', 'latent_arbitrage', 'Results files: '
                             'benchmarks/results/OUT.md / .json / .png.')


# ------------------------------------------------------------------------------ labelling
def _decode(bench, prompts: list[list[int]], budget: int, cache_size: int, batch: int,
            decoder=None) -> list[list[int]]:
  """Greedy rows of `bench`'s model (`ar`, or `decoder`); the prompts are padded with copies
  to a multiple of the batch, so that every batch has one shape (one compile)."""
  n = len(prompts)
  if not n:
    return []
  padded = prompts + [prompts[-1]] * (-n % batch)
  rows, _ = bench.run_one(decoder or bench.decoder('ar'), padded, max_new_tokens=budget,
                          cache_size=cache_size, seed=0, batch_size=batch)
  return [r.tokens for r in rows[:n]]


TRAJECTORIES = ('small', 'large', 'random')


def label(small_bench, large_bench, large_dir: str, task, exs, batch: int, margin: float
          ) -> tuple[arbitrage.StepLabels, list[list[int]], list[list[int]], dict[str, float],
                     list[list[int]]]:
  """Step labels along three kinds of greedy rows on `exs` (in TRAJECTORIES order: the small
  model's, the large model's, and those of a random step router sending half the steps to
  the large model); row j of the labels is problem j % len(exs). Also returns (prompts, rows)
  of every labelled row, each kind's accuracy, and the small model's drafted step s_k at each
  label (cut after its first step end or eos)."""
  tok = small_bench.tokenizer
  budget = task.max_cot_chars + task.max_answer_chars + 2
  bound = step_budget(task)
  cache = task.max_question_chars + 3 + 2 * budget + 16
  prompts = [reasoning.prompt_ids(tok, e) for e in exs]
  mixed = small_bench.decoder('arbitrage', settings={'random_fraction': 0.5,
                                                     'large_workdir': large_dir})
  rows = (_decode(small_bench, prompts, budget, cache, batch)
          + _decode(large_bench, prompts, budget, cache, batch)
          + _decode(small_bench, prompts, budget, cache, batch, decoder=mixed))
  score = lambda e, ids: float(task.score(e, reasoning.parse_answer(tok, ids) or '\0'))
  n = len(exs)
  accuracy = {k: float(np.mean([score(exs[j % n], rows[j]) for j in range(i * n, (i + 1) * n)]))
              for i, k in enumerate(TRAJECTORIES)}

  drafted = []

  def draft_fn(problems, prefixes):
    del problems
    drafted.extend(_decode(small_bench, prefixes, bound, cache, batch))
    return drafted

  def value_fn(problems, prefixes):
    todo = [j for j, p in enumerate(prefixes) if p[-1] != tok.eos_id]
    full = list(prefixes)
    for j, o in zip(todo, _decode(large_bench, [prefixes[j] for j in todo], budget, cache,
                                  batch)):
      full[j] = prefixes[j] + o
    return [score(exs[b % n], f) for b, f in zip(problems, full)]

  labels = arbitrage.label_steps(prompts * len(TRAJECTORIES), rows, value_fn, draft_fn,
                                 eos_id=tok.eos_id, margin=margin)
  drafts = [arbitrage.cut_step(d, routing.STEP_END_IDS, tok.eos_id) for d in drafted]
  return labels, prompts * len(TRAJECTORIES), rows, accuracy, drafts


def step_budget(task) -> int:
  """Tokens a drafted step may take (labels' drafts and the drafted judge's bound alike)."""
  return max(task.max_step_chars, task.max_answer_chars + 1) + 1


def step_features(small, prompts, rows, labels: arbitrage.StepLabels
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Router features [M, F] and GlimpRouter's top-20 entropy [M] of the small model at each
  labelled step's start (its output at position pos - 1 of prompt + row, teacher-forced)."""
  seqs = [p + r for p, r in zip(prompts, rows)]
  T = max(map(len, seqs))
  tokens = np.full((len(seqs), T), small.tokenizer.eos_id, np.int32)
  for i, s in enumerate(seqs):
    tokens[i, :len(s)] = s
  feats, ents = [], []
  for i in range(0, len(seqs), 64):
    logits, hidden = latent_router.outputs(small.model, small.params, jnp.asarray(tokens[i:i + 64]))
    sel = (labels.row_M >= i) & (labels.row_M < i + 64)
    r, p = labels.row_M[sel] - i, labels.pos_M[sel] - 1
    lg, hd = logits[r, p], hidden[r, p]
    feats.append(np.asarray(routing.router_features(lg, hd, small.params['embed']['embedding'])))
    ents.append(np.asarray(feedback.topk_entropy(lg, 20)))
  return np.concatenate(feats), np.concatenate(ents)


def drafted_step_features(small, prompts, rows, labels: arbitrage.StepLabels,
                          drafts: list[list[int]]) -> np.ndarray:
  """The drafted judge's router features [M, 2F + 1] (arbitrage.drafted_features) of each
  labelled step: prefix_k + s_k teacher-forced through the small model; the mean of
  router_features over its outputs at positions P - 1 .. P + m - 2 (those that produced the
  m tokens of s_k, P = len(prefix_k)), those at P + m - 1 (after the step), and m."""
  seqs = [(prompts[r] + rows[r])[:p] + d
          for r, p, d in zip(labels.row_M, labels.pos_M, drafts)]
  T, B = max(map(len, seqs)), 64
  embed = small.params['embed']['embedding']
  sums, counts, lasts = [], [], []
  for i in range(0, len(seqs), B):
    chunk = seqs[i:i + B]
    tokens = np.full((B, T), small.tokenizer.eos_id, np.int32)
    for j, s in enumerate(chunk):
      tokens[j, :len(s)] = s
    logits, hidden = latent_router.outputs(small.model, small.params, jnp.asarray(tokens))
    f = np.asarray(routing.router_features(logits.reshape(B * T, -1),
                                           hidden.reshape(B * T, -1), embed)).reshape(B, T, -1)
    for j, (s, d) in enumerate(zip(chunk, drafts[i:i + B])):
      P, m = len(s) - len(d), len(d)
      sums.append(f[j, P - 1:P + m - 1].sum(0))
      counts.append(m)
      lasts.append(f[j, P + m - 1])
  return np.asarray(arbitrage.drafted_features(jnp.asarray(np.stack(sums)),
                                               jnp.asarray(counts), jnp.asarray(np.stack(lasts))))


def _balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
  tpr = (pred & y).sum() / max(y.sum(), 1)
  tnr = (~pred & ~y).sum() / max((~y).sum(), 1)
  return float((tpr + tnr) / 2)


def _quantile_thresholds(signal: np.ndarray, fractions: list[float]) -> list[float]:
  """Thresholds t with P(signal >= t) ~ f for each target fraction f."""
  return [float(np.quantile(signal, 1.0 - f)) for f in fractions]


# ------------------------------------------------------------------------------ benchmark
def run(small_dir: str, large_dir: str, task_name: str, rows: int, questions: int, batch: int,
        margin: float, fractions: list[float], router_steps: int) -> dict[str, Any]:
  task = reasoning.get(task_name)
  ev = latent.Evaluator(task, 'train', questions, batch)
  small_bench, large_bench = ev.bench(small_dir), ev.bench(large_dir)
  exs = reasoning.examples(task, rows, seed=1)
  labels, prompts, trajectories, traj_acc, drafts = label(small_bench, large_bench, large_dir,
                                                          task, exs, batch, margin)
  feats, ent = step_features(small_bench.target, prompts, trajectories, labels)
  dfeats = drafted_step_features(small_bench.target, prompts, trajectories, labels, drafts)
  y = labels.label_M
  train = (labels.row_M % rows) < int(0.8 * rows)
  router, fit = latent_router.train_router(feats[train], y[train].astype(np.float32),
                                           router_steps)
  routing.save_router(os.path.join(os.path.dirname(small_dir), 'arbitrage_router.npz'), router)
  p_steps = np.asarray(jax.nn.sigmoid(routing.router_logit(router, jnp.asarray(feats))))
  drouter, dfit = latent_router.train_router(dfeats[train], y[train].astype(np.float32),
                                             router_steps)
  routing.save_router(os.path.join(os.path.dirname(small_dir), 'arbitrage_drafted_router.npz'),
                      drouter)
  p_drafted = np.asarray(jax.nn.sigmoid(routing.router_logit(drouter, jnp.asarray(dfeats))))
  adv, kind = labels.advantage_M, labels.row_M // rows
  out: dict[str, Any] = {
      'task': task_name, 'small_run': small_dir, 'large_run': large_dir, 'margin': margin,
      'training_problems': rows, 'questions': questions,
      'labels': {'steps': int(len(y)), 'positive_fraction': float(y.mean()),
                 'trajectory_accuracy': traj_acc,
                 'advantage_counts': {t: {str(a): int(((adv == a) & (kind == i)).sum())
                                          for a in (-1, 0, 1)}
                                      for i, t in enumerate(TRAJECTORIES)}},
      'router': {**fit, 'val_balanced_accuracy': _balanced_accuracy(
          p_steps[~train] >= 0.5, y[~train]), 'val_steps': int((~train).sum())},
      'drafted_router': {**dfit, 'val_balanced_accuracy': _balanced_accuracy(
          p_drafted[~train] >= 0.5, y[~train]), 'max_step_tokens': step_budget(task)}}
  print(f'labels {out["labels"]}; router {out["router"]}; drafted router '
        f'{out["drafted_router"]}', flush=True)
  r2r_tokens, r2r_mask = latent_router.cot_rows(small_bench.tokenizer, task, rows, seed=1)
  r2r_feats, r2r_labels = latent_router.features_and_labels(
      small_bench.target, large_bench.target, r2r_tokens, r2r_mask)
  r2r, r2r_fit = latent_router.train_router(r2r_feats, r2r_labels, router_steps)
  p_tokens = np.asarray(jax.nn.sigmoid(routing.router_logit(r2r, jnp.asarray(r2r_feats))))
  out['r2r_router'] = r2r_fit
  out['small'], out['large'] = ev.run('ar', small_dir), ev.run('ar', large_dir)
  sweeps = {'arbitrage': (_quantile_thresholds(p_steps[train], fractions), router),
            'glimprouter': (_quantile_thresholds(ent[train], fractions), None),
            'r2r': (_quantile_thresholds(p_tokens, fractions), r2r)}
  out['curves'] = {}
  for name, (thresholds, rtr) in sweeps.items():
    for f, th in zip(fractions, thresholds):
      r = ev.run(name, small_dir, {'threshold': th}, large=large_dir, router=rtr)
      out['curves'].setdefault(name, []).append({'target_fraction': f, 'threshold': th, **r})
      print(f'{name} @{th:.4g} (target {f}): {r}', flush=True)
      if name == 'arbitrage':
        rnd = ev.run('arbitrage', small_dir,
                     {'random_fraction': min(max(r['large_step_fraction'], 1e-3), 1.0)},
                     large=large_dir)
        out['curves'].setdefault('random (steps)', []).append({'target_fraction': f, **rnd})
        print(f'  random at the same step fraction: {rnd}', flush=True)
  drafted = {'judge': 'drafted', 'max_step_tokens': step_budget(task)}
  for f, th in zip(fractions, _quantile_thresholds(p_drafted[train], fractions)):
    r = ev.run('arbitrage', small_dir, {**drafted, 'threshold': th}, large=large_dir,
               router=drouter)
    out['curves'].setdefault(DRAFTED, []).append({'target_fraction': f, 'threshold': th, **r})
    print(f'{DRAFTED} @{th:.4g} (target {f}): {r}', flush=True)
  return out


DRAFTED = 'arbitrage (drafted)'


def _se(acc: float, n: int) -> float:
  return float(np.sqrt(max(acc * (1 - acc), 1e-12) / n))


def matched(res: dict[str, Any], n: int) -> list[list[str]]:
  """For each Arbitrage point: the other routers' point nearest in large-token fraction."""
  rows = []
  for i, a in enumerate(res['curves']['arbitrage']):
    row = [f'{a["large_fraction"]:.2f}', f'{a["accuracy"]:.1%}']
    for name in ('glimprouter', 'r2r') + ((DRAFTED,) if DRAFTED in res['curves'] else ()):
      b = min(res['curves'][name], key=lambda r: abs(r['large_fraction'] - a['large_fraction']))
      row.append(f'{b["accuracy"]:.1%} @{b["large_fraction"]:.2f}')
    rnd = res['curves']['random (steps)'][i]
    row.append(f'{rnd["accuracy"]:.1%} @{rnd["large_fraction"]:.2f}')
    row.append(f'{np.sqrt(2) * _se(a["accuracy"], n):.1%}')
    rows.append(row)
  return rows


def report(res: dict[str, Any]) -> str:
  lab, rt, n = res['labels'], res['router'], res['questions']
  rows = [['small alone', '-', '-', f'{res["small"]["accuracy"]:.1%}', '0.00', '0.00', '0.00',
           '-', f'{res["small"]["tokens"]:.1f}'],
          ['large alone', '-', '-', f'{res["large"]["accuracy"]:.1%}', '1.00', '1.00', '1.00',
           '-', f'{res["large"]["tokens"]:.1f}']]
  for name, curve in res['curves'].items():
    for r in curve:
      step, touched = r.get('large_step_fraction'), r.get('large_touched_step_fraction')
      rows.append([name, f'{r["target_fraction"]:.2f}',
                   f'{r["threshold"]:.4g}' if 'threshold' in r else '-',
                   f'{r["accuracy"]:.1%}', f'{r["large_fraction"]:.2f}',
                   '-' if step is None else f'{step:.2f}',
                   '-' if touched is None else f'{touched:.2f}',
                   f'{r["discarded_fraction"]:.2f}' if 'discarded_fraction' in r else '-',
                   f'{r["tokens"]:.1f}'])
  return (
      f'### {res["task"]}\n\nSmall = `{res["small_run"]}`, large = `{res["large_run"]}`; {n} '
      'held-out in-distribution questions, greedy, one run (one seed) per point. Large '
      'fraction = share of generated tokens the large model wrote; steps = share of steps it '
      'began (R2R routes tokens, so it has no step share); touched = share of steps in which it '
      'wrote at least one token (R2R can touch a step by writing one of its tokens); '
      'discarded = drafted tokens thrown away per generated token (`arbitrage (drafted)`: the '
      'router judges the small model\'s drafted step, the large model rewrites the rejected '
      'ones; `arbitrage` judges at the step\'s first token and drafts nothing).\n\n'
      f'Advantage labels: {lab["steps"]} step boundaries on {res["training_problems"]} '
      'training problems, along the greedy rows of the small model, the large model and a '
      'random step router (half the steps large), whose accuracies on these problems are '
      + ' / '.join(f'{v:.1%}' for v in lab['trajectory_accuracy'].values())
      + f'; margin {res["margin"]}; advantage counts (-1 / 0 / +1) '
      + '; '.join(f'{t}: ' + ' / '.join(str(c) for c in counts.values())
                  for t, counts in lab['advantage_counts'].items())
      + f'; positive fraction {lab["positive_fraction"]:.3f}. '
      f'Arbitrage router: train balanced accuracy {rt["balanced_accuracy"]:.3f}, held-out '
      f'({rt["val_steps"]} steps of the last 20% of problems) '
      f'{rt["val_balanced_accuracy"]:.3f}. R2R router (divergence labels): train balanced '
      f'accuracy {res["r2r_router"]["balanced_accuracy"]:.3f}.'
      + (f' Drafted-step router (same labels, features of prefix + the small model\'s drafted '
         f'step, at most {res["drafted_router"]["max_step_tokens"]} tokens): train balanced '
         f'accuracy {res["drafted_router"]["balanced_accuracy"]:.3f}, held-out '
         f'{res["drafted_router"]["val_balanced_accuracy"]:.3f}.'
         if 'drafted_router' in res else '') + '\n\n'
      + common.markdown_table(['router', 'target fraction', 'threshold', 'accuracy',
                               'large fraction', 'large steps', 'large steps touched',
                               'discarded', 'tokens'],
                              rows)
      + '\n\nMatched budgets (nearest point of each other router by large-token fraction):'
      '\n\n' + common.markdown_table(
          ['large fraction', 'arbitrage acc', 'glimprouter acc', 'r2r acc']
          + (['arbitrage (drafted) acc'] if DRAFTED in res['curves'] else [])
          + ['random (steps) acc', 's.e. of a difference'], matched(res, n)))


def plot(results: list[dict[str, Any]], out: str = 'latent_arbitrage') -> str:
  plt = common.pyplot()
  fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
  for ax, res in zip(axes[0], results):
    for name, curve in res['curves'].items():
      pts = sorted([(0.0, 100 * res['small']['accuracy'])]
                   + [(r['large_fraction'], 100 * r['accuracy']) for r in curve]
                   + [(1.0, 100 * res['large']['accuracy'])])
      ax.plot(*zip(*pts), 'o--' if name.startswith('random') else 'o-', label=name)
    ax.set(xlabel='fraction of tokens written by the large model', ylabel='accuracy (%)',
           title=f'{res["task"]}: routing at matched budgets (ends: small / large alone)')
    ax.legend(fontsize=8)
  path = os.path.join(common.RESULTS_DIR, f'{out}.png')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return path


def main(argv):
  del argv
  results = []
  root = latent._ROOT.value  # pylint: disable=protected-access
  for task in latent._TASKS.value or ['prosqa']:  # pylint: disable=protected-access
    saved = os.path.join(root, task, 'arbitrage.json')
    if _REUSE.value and os.path.exists(saved):
      with open(saved) as f:
        results.append(json.load(f))
      continue
    results.append(run(os.path.join(root, task, 'cot_other'),
                       os.path.join(root, task, 'cot'), task, _ROWS.value,
                       _QUESTIONS.value, _BATCH.value, _MARGIN.value,
                       [float(f) for f in _FRACTIONS.value], _STEPS.value))
    with open(saved, 'w') as f:
      json.dump(results[-1], f, indent=1)
  os.makedirs(common.RESULTS_DIR, exist_ok=True)
  out = _OUT.value
  with open(os.path.join(common.RESULTS_DIR, f'{out}.json'), 'w') as f:
    json.dump({r['task']: r for r in results}, f, indent=1)
  plot(results, out)
  body = '\n\n'.join(report(r) for r in results) + f'\n\n![]({out}.png)'
  path = common.write_results(out, 'Arbitrage vs GlimpRouter vs R2R', body)
  print(f'wrote {path}')


if __name__ == '__main__':
  # As benchmarks/latent.py: ProsQA orders edges by the hash seed; fix it so questions repeat.
  if os.environ.get('PYTHONHASHSEED') != '0':
    os.environ['PYTHONHASHSEED'] = '0'
    os.execv(sys.executable, [sys.executable, '-m', 'benchmarks.latent_arbitrage']
             + sys.argv[1:])
  define_flags()
  app.run(main)
