"""Train every latent-reasoning method on one task: the curriculum driver.

  python -m benchmarks.latent_train --task=prosqa --size=tiny [--steps=300] \\
      [--methods=cot,nocot,coconut,pause,sim_cot,nocurriculum] [--root=runs/latent]

One training run per curriculum stage (the optimizer resets between stages, as in Coconut),
each started from the previous stage's parameters:

  cot           stage 0 (the chain of thought in language), stage0_factor x steps
  coconut       stages 1 .. max_stage from cot, `steps` each
  pause         the same curriculum with <pause> thoughts, from cot
  sim_cot       the Coconut curriculum with SIM-CoT's step supervision, from cot
  nocurriculum  the final stage (every step latent) straight from cot, with the steps of
                the whole curriculum (max_stage x steps): Coconut's "w/o curriculum"
  nocot         no chain of thought, from scratch, with the steps of cot + curriculum

Runs land in ROOT/TASK/METHOD[_stageS][SUFFIX]; a finished run is skipped when rerun (resume is
exact). Prints the workdir of each method's final model (what benchmarks/latent.py reads).
"""

from __future__ import annotations

import os
import subprocess
import sys

from absl import app, flags

from configs import latent_reasoning


ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def plan(task: str, size: str, steps: int, stage0_factor: int, methods: list[str], root: str,
         extra: list[str], suffix: str = '') -> tuple[list[tuple[str, str]], dict[str, str]]:
  """[(workdir, config argument)] in training order and {method: final workdir}."""
  base = latent_reasoning.get_config(','.join([f'task={task}', f'size={size}'] + extra))
  steps = steps or base.train.steps
  max_stage = base.latent.max_stage
  d = lambda name: os.path.join(root, task, name + suffix)
  common = [f'task={task}', f'size={size}'] + extra
  arg = lambda **kw: ','.join(common + [f'{k}={v}' for k, v in kw.items()])
  runs, final = [], {}
  needs_cot = any(m != 'nocot' for m in methods)
  if needs_cot:
    runs.append((d('cot'), arg(method='cot', steps=stage0_factor * steps)))
    final['cot'] = d('cot')
  for method in methods:
    if method in ('coconut', 'pause', 'sim_cot'):
      prev = d('cot')
      for stage in range(1, max_stage + 1):
        runs.append((d(f'{method}_stage{stage}'),
                     arg(method=method, stage=stage, steps=steps, init=prev)))
        prev = d(f'{method}_stage{stage}')
      final[method] = prev
    elif method == 'nocurriculum':
      runs.append((d('nocurriculum'), arg(method='coconut', stage=max_stage + 1,
                                          steps=max_stage * steps, init=d('cot'))))
      final[method] = d('nocurriculum')
    elif method == 'nocot':
      runs.append((d('nocot'), arg(method='nocot', steps=(stage0_factor + max_stage) * steps)))
      final[method] = d('nocot')
    elif method != 'cot':
      raise ValueError(f'Unknown method {method!r}.')
  return runs, final


def _finished(workdir: str) -> bool:
  path = os.path.join(workdir, 'loss_curve.png')
  return os.path.exists(path)



def define_flags() -> None:
  """Command-line flags (defined only when run as a script, so the module can be imported)."""
  global _TASK, _SIZE, _STEPS, _STAGE0, _METHODS, _ROOT, _EXTRA, _DRY, _SUFFIX
  _TASK = flags.DEFINE_string('task', 'prosqa', 'Reasoning task.')
  _SIZE = flags.DEFINE_string('size', 'tiny', 'Model preset (test, tiny, small).')
  _STEPS = flags.DEFINE_integer('steps', 0, 'Steps per stage (0 = the config default).')
  _STAGE0 = flags.DEFINE_integer('stage0_factor', 2, 'CoT stage trains this many x steps.')
  _METHODS = flags.DEFINE_list('methods', ['cot', 'nocot', 'coconut', 'pause', 'sim_cot',
                                           'nocurriculum'], 'Methods to train, in order.')
  _ROOT = flags.DEFINE_string('root', 'runs/latent', 'Where the runs go.')
  _EXTRA = flags.DEFINE_list('extra', [], 'More config arguments (key=value) for every run.')
  _DRY = flags.DEFINE_bool('dry_run', False, 'Print the commands only.')
  _SUFFIX = flags.DEFINE_string('suffix', '', 'Appended to every run name (e.g. _test).')

def main(argv):
  del argv
  runs, final = plan(_TASK.value, _SIZE.value, _STEPS.value, _STAGE0.value, _METHODS.value,
                     _ROOT.value, _EXTRA.value, _SUFFIX.value)
  for workdir, arg in runs:
    cmd = [sys.executable, 'train.py', f'--config=configs/latent_reasoning.py:{arg}',
           f'--workdir={workdir}']
    print(' '.join(cmd), flush=True)
    if _DRY.value or _finished(workdir):
      continue
    subprocess.run(cmd, cwd=ROOT_DIR, check=True)
  for method, workdir in final.items():
    print(f'final {method}: {workdir}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
