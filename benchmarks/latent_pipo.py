"""PIPO (Pair-In, Pair-Out) against AR decoding of its base, over the confidence threshold.

  python -m benchmarks.latent_pipo --task=prontoqa --root=runs/pipo   # CPU: ~4 min

Runs (see configs/pipo.py for the commands): the base ROOT/TASK/cot (configs/latent_reasoning.py,
method=cot) and the PIPO run ROOT/TASK/pipo fine-tuned from it. On `questions` in-distribution
questions (data/tasks/reasoning.py, seed 0), greedy, batch `batch`, the script decodes

  ar           the base, one token per forward (the reference for speed);
  pipo @ t     the PIPO run for each confidence threshold t (+inf: never accept a pair, the
               PIPO model's own one-token-per-forward decoding; -inf: always accept),

and reports task accuracy, base forwards per generated token (prefill included), the share of
steps that took a pair, prompt positions (pairs halve them), tokens/s and speedup against `ar`
(each decoder's fastest of `repeats` passes, passes interleaved within a run), then writes
benchmarks/results/OUT.md / .json and OUT.png (accuracy against base forwards per token over
the threshold); OUT is `--out`, latent_pipo unless given.

GlimpRouter, R2R and Arbitrage (benchmarks/latent_arbitrage.py) split a fixed number of
large-model tokens between a small and a large model; PIPO is a one-model method with no
large-model budget to match, so it is compared with its own base on accuracy against base
forwards per token instead.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from absl import app, flags

from benchmarks import common
from data.tasks import reasoning
from workbench import Workbench

_TASK = flags.DEFINE_string('task', 'prontoqa', 'Reasoning task (data/tasks/reasoning.py).')
_ROOT = flags.DEFINE_string('root', 'runs/pipo', 'Runs: ROOT/TASK/cot (base), ROOT/TASK/pipo.')
_BASE = flags.DEFINE_string('base_run', '', 'The base run (default ROOT/TASK/cot).')
_PIPO = flags.DEFINE_string('pipo_run', '', 'The PIPO run (default ROOT/TASK/pipo).')
_QUESTIONS = flags.DEFINE_integer('questions', 200, 'Held-out questions (in distribution).')
_BATCH = flags.DEFINE_integer('batch', 100, 'Decode batch.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed passes per decoder (fastest kept).')
_OUT = flags.DEFINE_string('out', 'latent_pipo', 'Results files: '
                           'benchmarks/results/OUT.md / .json / .png.')
_THRESHOLDS = flags.DEFINE_list('thresholds', ['inf', '0.9', '0.8', '0.7', '0.6', '0.5', '0.3',
                                               '-inf'], 'Confidence thresholds of pipo.')


def _row(task, exs, tok, rows, stats, ar_tps: float | None, ar_rows=None) -> dict[str, Any]:
  answers = [reasoning.parse_answer(tok, r.tokens) for r in rows]
  ref = ar_rows or rows
  hist = list(stats.step_tokens_hist) + [0] * 3
  steps = max(hist[1] + hist[2], 1)
  out = {'accuracy': reasoning.accuracy(task, exs, answers),
         'tokens': float(np.mean([len(r.tokens) for r in rows])),
         'forwards_per_token': stats.target_forwards / max(stats.generated, 1),
         'tau': stats.tau, 'pair_share': hist[2] / steps, 'tokens_per_s': stats.tokens_per_s,
         'wall_s': stats.wall_time_s,
         'same_as_ar': float(np.mean([r.tokens == a.tokens for r, a in zip(rows, ref)])),
         'answer_as_ar': float(np.mean([x == reasoning.parse_answer(tok, a.tokens)
                                        for x, a in zip(answers, ref)]))}
  if 'positions_B' in stats.extra:
    out['positions'] = float(np.sum(stats.extra['positions_B']) / len(rows))
  out['speedup'] = stats.tokens_per_s / ar_tps if ar_tps else 1.0
  out['speedup_above_tau'] = common.speedup_above_tau(out['speedup'], stats.tau)
  return out


def run(task_name: str, root: str, questions: int, batch: int, repeats: int,
        thresholds: list[float], base_dir: str = '', pipo_dir: str = '') -> dict[str, Any]:
  task = reasoning.get(task_name)
  base_dir = base_dir or os.path.join(root, task_name, 'cot')
  pipo_dir = pipo_dir or os.path.join(root, task_name, 'pipo')
  base, pipo = Workbench.load(base_dir), Workbench.load(pipo_dir)
  tok = base.tokenizer
  exs = reasoning.examples(task, questions, seed=0, split='train')
  prompts = [reasoning.prompt_ids(tok, e) for e in exs]
  budget = task.max_cot_chars + task.max_answer_chars + 2
  kw = dict(max_new_tokens=budget, cache_size=task.max_question_chars + 3 + budget + 16,
            seed=0, batch_size=batch, repeats=repeats)
  rows, stats = base.run_one(base.decoder('ar'), prompts, **kw)
  out: dict[str, Any] = {'task': task_name, 'base_run': base_dir, 'pipo_run': pipo_dir,
                         'questions': questions, 'batch': batch, 'repeats': repeats,
                         'budget': budget,
                         'majority': float(max(np.unique([e.answer for e in exs],
                                                   return_counts=True)[1]) / len(exs))}
  out['ar'] = _row(task, exs, tok, rows, stats, None)
  out['ar']['positions'] = float(np.mean([len(p) for p in prompts]) + out['ar']['tokens'] - 1)
  print(f'ar: {out["ar"]}', flush=True)
  decs = [(f'pipo@{t}', pipo.decoder('pipo', settings={'threshold': t})) for t in thresholds]
  # The PIPO model one token per position, prompt included: AR's positions plus the heads.
  single = pipo.decoder('pipo', settings={'threshold': math.inf, 'pair_prompt': False})
  res = pipo.run(decs + [('pipo@inf,single', single)], prompts, **kw)
  out['pipo'] = []
  for (label, _), t in zip(decs, thresholds):
    r = _row(task, exs, tok, *res[label], out['ar']['tokens_per_s'], ar_rows=rows)
    out['pipo'].append({'threshold': t, **r})
    print(f'{label}: {r}', flush=True)
  out['pipo_single'] = _row(task, exs, tok, *res['pipo@inf,single'], out['ar']['tokens_per_s'],
                            ar_rows=rows)
  print(f'pipo@inf, single-token prompt: {out["pipo_single"]}', flush=True)
  return out


def _fmt_threshold(t: float) -> str:
  return ('+inf (never)' if t == math.inf else '-inf (always)' if t == -math.inf
          else f'{t:g}')


def render(out: dict[str, Any]) -> str:
  ar = out['ar']
  rows = [['ar (base)', '-', f'{100 * ar["accuracy"]:.1f}%', '100.0%', '100.0%',
           f'{ar["forwards_per_token"]:.3f}', f'{ar["tau"]:.2f}', '0.00',
           f'{ar["positions"]:.1f}', f'{ar["tokens"]:.1f}', f'{ar["tokens_per_s"]:.0f}', '1.00x']]
  for name, r in [('pipo', r) for r in out['pipo']] + [
      ('pipo, prompt one token per position', {**out['pipo_single'], 'threshold': math.inf})]:
    flag = ' (!)' if r['speedup_above_tau'] else ''
    rows.append([name, _fmt_threshold(r['threshold']), f'{100 * r["accuracy"]:.1f}%',
                 f'{100 * r["answer_as_ar"]:.1f}%', f'{100 * r["same_as_ar"]:.1f}%',
                 f'{r["forwards_per_token"]:.3f}', f'{r["tau"]:.2f}', f'{r["pair_share"]:.2f}',
                 f'{r["positions"]:.1f}', f'{r["tokens"]:.1f}', f'{r["tokens_per_s"]:.0f}',
                 f'{r["speedup"]:.2f}x{flag}'])
  n = out['questions']
  se = 100 * math.sqrt(0.25 / n)
  return (
      f'### {out["task"]}\n\nBase = `{out["base_run"]}` (CoT), PIPO = `{out["pipo_run"]}` '
      f'(fine-tuned from it by configs/pipo.py); {n} in-distribution questions, greedy, '
      f'batch {out["batch"]}, budget {out["budget"]} tokens, one run (one seed, one training '
      f'run per model). Accuracy s.e. at most {se:.1f} points; answer = ar / row = ar: share '
      'of questions whose answer / whole output equals the base\'s `ar` output (the '
      'fine-tuned PIPO model is not the base, so +inf need not equal it). Forwards/token = '
      'base forward passes (prefill included) per generated token, tau its inverse; pairs = '
      'share of steps that committed two tokens; positions = cache positions per row '
      '(prompt + generated; PIPO reads the prompt in pairs); tokens/s from the fastest of '
      f'{out["repeats"]} passes per decoder on this shared CPU (ar and pipo in separate '
      'runs), speedup = tokens/s against ar of the base. PIPO is lossy: a pair is accepted on '
      'the confidence head\'s word, with no verifier forward. (!) = speedup above tau, which '
      'PIPO can reach legitimately (`cheaper_steps`: its prompt runs over half the positions '
      'and each step attends to one key per chunk) as well as by timing noise; the last row '
      'reads the prompt one token per position, so its steps cost at least an AR step (a '
      'timing control: the model was trained on paired prompts, so its accuracy means '
      'little). Always giving the most common answer scores '
      f'{100 * out["majority"]:.1f}% on these questions.\n\n'
      + common.markdown_table(['decoder', 'threshold', 'accuracy', 'answer = ar', 'row = ar',
                               'forwards/token', 'tau', 'pairs', 'positions', 'tokens',
                               'tokens/s', 'speedup'], rows)
      + '\n\nGlimpRouter, R2R and Arbitrage (latent_arbitrage.md) split a budget of '
      'large-model tokens between two models; PIPO runs one model, so there is no large-model '
      'budget to match: it is compared with its own base on accuracy against base forwards '
      'per token.\n')


def plot(out: dict[str, Any], name: str = 'latent_pipo') -> str:
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 4))
  xs = [r['forwards_per_token'] for r in out['pipo']]
  ys = [100 * r['accuracy'] for r in out['pipo']]
  ax.plot(xs, ys, 'o-', label='pipo (threshold sweep)')
  for r, x, y in zip(out['pipo'], xs, ys):
    ax.annotate(_fmt_threshold(r['threshold']).split(' ')[0], (x, y), fontsize=7,
                textcoords='offset points', xytext=(3, 3))
  ax.plot([out['ar']['forwards_per_token']], [100 * out['ar']['accuracy']], 's',
          label='ar (base)')
  ax.set_xlabel('base forwards per generated token')
  ax.set_ylabel('accuracy (%)')
  ax.set_title(f'PIPO on {out["task"]} (one run)')
  ax.legend()
  fig.tight_layout()
  path = os.path.join(common.RESULTS_DIR, f'{name}.png')
  fig.savefig(path, dpi=120)
  return path


def main(argv):
  del argv
  thresholds = [float(t) for t in _THRESHOLDS.value]
  out = run(_TASK.value, _ROOT.value, _QUESTIONS.value, _BATCH.value, _REPEATS.value,
            thresholds, _BASE.value, _PIPO.value)
  common.write_json(_OUT.value, {**out, 'provenance': common.provenance()})
  plot(out, _OUT.value)
  print(common.write_results(_OUT.value, 'PIPO (Pair-In, Pair-Out) vs AR', render(out)))


if __name__ == '__main__':
  app.run(main)
