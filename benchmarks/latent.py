"""Latent reasoning benchmark: accuracy against generated tokens, and routing curves.

  python -m benchmarks.latent --protocol=full     # GPU: every task, `small` models (hours)
  python -m benchmarks.latent --protocol=cpu      # CPU: ProsQA only, tiny models, short runs

Trains what is missing (benchmarks/latent_train.py: CoT, no-CoT, Coconut, Coconut + SIM-CoT,
pause tokens, Coconut without curriculum; a smaller CoT model for routing and its R2R router),
then decodes held-out questions of each task, in distribution ('train' split, unseen
examples) and out of distribution ('ood'), with:

  CoT / no-CoT                 ar on the CoT / no-CoT model
  Soft Thinking, SwiReasoning  training-free, on the CoT model (lossy)
  CNTP                         on the CoT model, sampled (lossy)
  Coconut (+ SIM-CoT), pause, Coconut w/o curriculum   on their own models
  GlimpRouter, R2R, random     small CoT model + large CoT model, swept over the budget knob

and writes benchmarks/results/latent.md (accuracy, mean generated tokens per question,
thoughts included, goal checks) with latent_pareto.png (accuracy vs tokens) and
latent_routing.png (accuracy vs fraction of tokens written by the large model).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
from absl import app, flags

from benchmarks import common
from benchmarks import latent_router
from benchmarks import latent_train
from data.tasks import reasoning
from decoding import Models, SamplingConfig, registry, run_decoder
from decoding.latent import routing
from training import loading

_PROTOCOL = flags.DEFINE_enum('protocol', 'cpu', ['cpu', 'full'], 'Which protocol to run.')
_ROOT = flags.DEFINE_string('root', 'runs/latent', 'Training runs live here.')
_TASKS = flags.DEFINE_list('tasks', None, 'Override the protocol\'s tasks.')
_NUM_EVAL = flags.DEFINE_integer('num_eval', 0, 'Questions per split (0 = protocol default).')
_SKIP_TRAIN = flags.DEFINE_bool('skip_train', False, 'Only evaluate existing runs.')
_STEPS = flags.DEFINE_integer('steps', 0, 'Steps per stage (0 = protocol default).')


@dataclasses.dataclass(frozen=True)
class Protocol:
  """tasks; size of the curriculum models; steps per curriculum stage (0 = the config's
  default) and the CoT stage's multiple of it; routing pairs the main CoT model with another
  CoT model (`other_size`, other_factor x steps; the large one when other_is_large);
  held-out questions per split; decode batch; extra config arguments for every run."""
  tasks: tuple[str, ...]
  size: str
  steps: int
  stage0_factor: int
  other_size: str
  other_factor: int
  other_is_large: bool
  num_eval: int
  batch_size: int
  extra: tuple[str, ...] = ()


PROTOCOLS = {
    # CPU: `test` models; the CoT stage needs ~1000 steps to leave its plateau on ProsQA.
    # Routing: the same size, the small model trained 3x shorter.
    'cpu': Protocol(('prosqa',), 'test', 200, 6, 'test', 2, False, 200, 100,
                    ('lr=3e-3', 'batch=32')),
    'full': Protocol(('prosqa', 'prontoqa', 'multiplication', 'parity'), 'small', 0, 2,
                     'tiny', 2, False, 1000, 250),
}
ROUTER_THRESHOLDS = {'glimprouter': (0.05, 0.2, 0.4, 0.7, 1.0, 1.5),
                     'r2r': (0.1, 0.3, 0.5, 0.7, 0.9)}


def _train(cmd_args: list[str]) -> None:
  cmd = [sys.executable, '-m', 'benchmarks.latent_train'] + cmd_args
  print(' '.join(cmd), flush=True)
  subprocess.run(cmd, check=True)


class Evaluator:
  """Decodes one split of a task with any decoder and scores the answers."""

  def __init__(self, task: reasoning.ReasoningTask, split: str, n: int, batch_size: int):
    self.task, self.split, self.batch_size = task, split, batch_size
    self.examples = reasoning.examples(task, n, seed=0, split=split)
    self._loaded: dict[str, Any] = {}

  def load(self, workdir: str):
    if workdir not in self._loaded:
      self._loaded[workdir] = loading.load_model(workdir)
    return self._loaded[workdir]

  def run(self, name: str, workdir: str, settings: dict[str, Any] | None = None,
          sampling: SamplingConfig = SamplingConfig(), large: str | None = None,
          router: dict[str, Any] | None = None) -> dict[str, float]:
    lm = self.load(workdir)
    tok = lm.tokenizer
    prompts = [reasoning.prompt_ids(tok, e) for e in self.examples]
    models, params = Models(lm.model), {'target': lm.params}
    settings = dict(settings or {})
    if large is not None:
      big = self.load(large)
      models = Models(lm.model, extras=(('large', big.model),))
      params['large'] = big.params
      settings['large_workdir'] = large
      if router is not None:
        params['router'] = router
    dec = registry.build(name, settings, sampling=sampling)
    budget = self.task.max_cot_chars + self.task.max_answer_chars + 2 + int(
        settings.get('latent_steps', 0))
    t0 = time.perf_counter()
    rows, stats = run_decoder(dec, models, params, prompts, max_new_tokens=budget,
                              cache_size=self.task.max_question_chars + 3 + budget + 16,
                              eos_id=tok.eos_id, pad_id=tok.pad_id, seed=0,
                              batch_size=self.batch_size)
    answers = [reasoning.parse_answer(tok, r.tokens) for r in rows]
    out = {'accuracy': reasoning.accuracy(self.task, self.examples, answers),
           'tokens': float(np.mean([len(r.tokens) for r in rows])),
           'seconds': time.perf_counter() - t0}
    if large is not None:
      out['large_fraction'] = stats.extra['large_tokens'] / max(stats.generated, 1)
    return out


def evaluate_task(task_name: str, proto: Protocol, root: str, n: int) -> dict[str, Any]:
  task = reasoning.get(task_name)
  from configs import latent_reasoning  # pylint: disable=g-import-not-at-top
  max_stage = latent_reasoning.MAX_STAGE[task_name]
  d = lambda m: os.path.join(root, task_name, m)
  final = latent_train.plan(task_name, proto.size, proto.steps, proto.stage0_factor, [
      'cot', 'nocot', 'coconut', 'pause', 'sim_cot', 'nocurriculum'], root,
                            list(proto.extra))[1]
  thoughts = {'latent_steps': max_stage}
  methods = [
      ('CoT', 'ar', final['cot'], {}, SamplingConfig()),
      ('no-CoT', 'ar', final['nocot'], {}, SamplingConfig()),
      ('Soft Thinking', 'soft_thinking', final['cot'], {'cold_stop_patience': 8},
       SamplingConfig()),
      ('SwiReasoning', 'swireasoning', final['cot'], {'swi_window': 4}, SamplingConfig()),
      ('CNTP', 'cntp', final['cot'], {}, SamplingConfig(temperature=0.8, top_p=0.95)),
      ('Coconut', 'coconut', final['coconut'], thoughts, SamplingConfig()),
      ('Coconut + SIM-CoT', 'coconut', final['sim_cot'], thoughts, SamplingConfig()),
      ('pause tokens', 'pause_thinking', final['pause'], thoughts, SamplingConfig()),
      ('Coconut w/o curriculum', 'coconut', final['nocurriculum'], thoughts, SamplingConfig()),
  ]
  results: dict[str, Any] = {'methods': {}, 'routing': {}}
  for split in reasoning.SPLITS:
    ev = Evaluator(task, split, n, proto.batch_size)
    for label, name, workdir, settings, sampling in methods:
      if not os.path.isdir(workdir):
        print(f'skip {label}: no run in {workdir}')
        continue
      r = ev.run(name, workdir, settings, sampling)
      results['methods'].setdefault(label, {})[split] = r
      print(f'{task_name} {split} {label}: {r}', flush=True)
  other = d('cot_other')
  if os.path.isdir(other) and os.path.isdir(final['cot']):
    small, large = (final['cot'], other) if proto.other_is_large else (other, final['cot'])
    results['routing'] = evaluate_routing(task, small, large, proto, n, root)
  return results


def evaluate_routing(task, small_dir: str, large_dir: str, proto: Protocol, n: int,
                     root: str) -> dict[str, Any]:
  ev = Evaluator(task, 'train', n, proto.batch_size)
  small, large = ev.load(small_dir), ev.load(large_dir)
  tokens, mask = latent_router.cot_rows(small.tokenizer, task, 512, seed=1)
  feats, labels = latent_router.features_and_labels(small, large, tokens, mask)
  router, metrics = latent_router.train_router(feats, labels, 400)
  routing.save_router(os.path.join(root, task.name, 'router.npz'), router)
  out: dict[str, Any] = {'router': metrics, 'small': ev.run('ar', small_dir),
                         'large': ev.run('ar', large_dir), 'curves': {}}
  for name, thresholds in ROUTER_THRESHOLDS.items():
    for th in thresholds:
      r = ev.run(name, small_dir, {'threshold': th}, large=large_dir,
                 router=router if name == 'r2r' else None)
      rnd = ev.run('r2r', small_dir, {'random_fraction': max(r['large_fraction'], 1e-3)},
                   large=large_dir)
      out['curves'].setdefault(name, []).append({'threshold': th, **r})
      out['curves'].setdefault(f'random@{name}', []).append(rnd)
      print(f'{task.name} {name} {th}: {r} | random {rnd}', flush=True)
  return out


def goals(all_results: dict[str, Any]) -> list[str]:
  """The issue's goals, each marked reached / not reached / not measured."""
  lines = []

  def m(task, label, split='train'):
    return all_results.get(task, {}).get('methods', {}).get(label, {}).get(split)

  cot, coco, nocur = m('prosqa', 'CoT'), m('prosqa', 'Coconut'), m('prosqa',
                                                                   'Coconut w/o curriculum')
  if cot and coco and nocur:
    ok = coco['accuracy'] >= 0.95 and coco['tokens'] <= cot['tokens'] / 3
    lines.append(f'- Coconut >= 95% on ProsQA with <= 1/3 of CoT tokens: '
                 f'{coco["accuracy"]:.1%} with {coco["tokens"]:.1f} vs {cot["tokens"]:.1f} '
                 f'tokens -> {"reached" if ok else "NOT reached"}; no curriculum '
                 f'{nocur["accuracy"]:.1%} ({"lower" if nocur["accuracy"] < coco["accuracy"] else "NOT lower"}).')
  else:
    lines.append('- Coconut on ProsQA: not measured.')
  sim, coco_m = m('multiplication', 'Coconut + SIM-CoT'), m('multiplication', 'Coconut')
  if sim and coco_m:
    gain = 100 * (sim['accuracy'] - coco_m['accuracy'])
    lines.append(f'- SIM-CoT >= Coconut + 3 points on multiplication: {gain:+.1f} points -> '
                 f'{"reached" if gain >= 3 else "NOT reached"}.')
  else:
    lines.append('- SIM-CoT on multiplication: not measured (multiplication is in the full '
                 'protocol only).')
  for task in all_results:
    st, c = m(task, 'Soft Thinking'), m(task, 'CoT')
    if st and c:
      ok = st['accuracy'] >= c['accuracy'] - 0.01 and st['tokens'] <= 0.8 * c['tokens']
      lines.append(f'- Soft Thinking within 1 point of CoT with <= 80% tokens ({task}): '
                   f'{st["accuracy"]:.1%} vs {c["accuracy"]:.1%}, {st["tokens"]:.1f} vs '
                   f'{c["tokens"]:.1f} tokens -> {"reached" if ok else "NOT reached"}.')
    curves = all_results[task].get('routing', {}).get('curves', {})
    for name in ('glimprouter', 'r2r'):
      if name in curves:
        wins = sum(r['accuracy'] > rnd['accuracy'] for r, rnd in
                   zip(curves[name], curves[f'random@{name}']))
        lines.append(f'- {name} beats a random router at the same large-model budget '
                     f'({task}): {wins}/{len(curves[name])} budgets.')
  return lines


def tables(all_results: dict[str, Any]) -> str:
  out = []
  for task, res in all_results.items():
    rows = []
    cot = res['methods'].get('CoT', {})
    for label, splits in res['methods'].items():
      row = [label]
      for split in reasoning.SPLITS:
        r = splits.get(split)
        ratio = (r['tokens'] / cot[split]['tokens']) if r and split in cot else float('nan')
        row += [f'{r["accuracy"]:.1%}', f'{r["tokens"]:.1f}', f'{ratio:.2f}'] if r else ['-'] * 3
      rows.append(row)
    out.append(f'### {task}\n\n' + common.markdown_table(
        ['method', 'acc (in-dist)', 'tokens', 'x CoT', 'acc (OOD)', 'tokens', 'x CoT'], rows))
    rt = res.get('routing')
    if rt:
      rrows = [['small alone', f'{rt["small"]["accuracy"]:.1%}', '0.00'],
               ['large alone', f'{rt["large"]["accuracy"]:.1%}', '1.00']]
      for name, curve in rt['curves'].items():
        for r in curve:
          rrows.append([f'{name}' + (f' @{r["threshold"]}' if 'threshold' in r else ''),
                        f'{r["accuracy"]:.1%}', f'{r["large_fraction"]:.2f}'])
      out.append(f'Routing ({task}, in-distribution; router: {rt["router"]}):\n\n'
                 + common.markdown_table(['router', 'accuracy', 'large fraction'], rrows))
  return '\n\n'.join(out)


def plots(all_results: dict[str, Any]) -> list[str]:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  paths = []
  tasks = list(all_results)
  fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
  for ax, task in zip(axes[0], tasks):
    for label, splits in all_results[task]['methods'].items():
      r = splits.get('train')
      if r:
        ax.scatter(r['tokens'], 100 * r['accuracy'], s=40)
        ax.annotate(label, (r['tokens'], 100 * r['accuracy']), fontsize=8)
    ax.set(xlabel='generated tokens per question (thoughts included)', ylabel='accuracy (%)',
           title=f'{task} (in distribution)')
  paths.append(os.path.join(common.RESULTS_DIR, 'latent_pareto.png'))
  fig.tight_layout()
  fig.savefig(paths[-1], dpi=120)
  routed = [t for t in tasks if all_results[t].get('routing')]
  if routed:
    fig, axes = plt.subplots(1, len(routed), figsize=(6 * len(routed), 4.5), squeeze=False)
    for ax, task in zip(axes[0], routed):
      for name, curve in all_results[task]['routing']['curves'].items():
        pts = sorted((r['large_fraction'], 100 * r['accuracy']) for r in curve)
        ax.plot(*zip(*pts), 'o--' if name.startswith('random') else 'o-', label=name)
      ax.set(xlabel='fraction of tokens written by the large model', ylabel='accuracy (%)',
             title=f'{task} routing')
      ax.legend(fontsize=8)
    paths.append(os.path.join(common.RESULTS_DIR, 'latent_routing.png'))
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=120)
  return paths


def main(argv):
  del argv
  proto = PROTOCOLS[_PROTOCOL.value]
  tasks = _TASKS.value or proto.tasks
  steps = _STEPS.value or proto.steps
  proto = dataclasses.replace(proto, steps=steps)
  n = _NUM_EVAL.value or proto.num_eval
  all_results = {}
  for task in tasks:
    if not _SKIP_TRAIN.value:
      args = [f'--task={task}', f'--root={_ROOT.value}', f'--steps={steps}']
      if proto.extra:
        args.append('--extra=' + ','.join(proto.extra))
      _train(args + [f'--size={proto.size}', f'--stage0_factor={proto.stage0_factor}'])
      _train(args + [f'--size={proto.other_size}', '--methods=cot', '--suffix=_other',
                     f'--stage0_factor={proto.other_factor}'])
    all_results[task] = evaluate_task(task, proto, _ROOT.value, n)
  os.makedirs(common.RESULTS_DIR, exist_ok=True)
  with open(os.path.join(common.RESULTS_DIR, 'latent.json'), 'w') as f:
    json.dump(all_results, f, indent=1)
  figs = plots(all_results)
  other = f'`{proto.other_size}` CoT trained {proto.other_factor}x steps'
  main_cot = f'`{proto.size}` CoT trained {proto.stage0_factor}x steps'
  pair = (main_cot, other) if proto.other_is_large else (other, main_cot)
  body = (f'Protocol `{_PROTOCOL.value}`: tasks {list(tasks)}, models `{proto.size}`, '
          f'{steps or "default"} steps per curriculum stage ({proto.stage0_factor}x for the '
          f'CoT stage); routing: small = {pair[0]}, large = {pair[1]}; '
          f'{n} held-out questions per split, greedy unless '
          'said otherwise. Tokens = generated tokens per question, thoughts, `</think>` and '
          '`<eos>` included; x CoT = tokens relative to CoT.\n\n'
          + tables(all_results) + '\n\n## Goals\n\n' + '\n'.join(goals(all_results))
          + '\n\n' + '\n'.join(f'![]({os.path.basename(p)})' for p in figs))
  path = common.write_results('latent', 'Latent and soft-token reasoning', body)
  print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main)
