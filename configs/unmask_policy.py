"""A learned unmasking policy for a trained masked-diffusion model, by policy gradient.

  python train.py --config=configs/diffusion_tasks.py:sudoku4,mdlm --workdir=runs/diffusion/sudoku4_mdlm
  python train.py --config=configs/unmask_policy.py:sudoku4 --workdir=runs/diffusion/sudoku4_policy
  python sample.py --workdir=runs/diffusion/sudoku4_policy --decoder=learned_unmask,fast_dllm

The argument is `TASK[,SIZE]` (TASK a generated task of configs/diffusion_tasks.py; SIZE the
diffusion model's preset, default tiny; `test` for unit tests). The run starts from the
masked-diffusion run in `policy.diffusion_workdir` (default runs/diffusion/TASK_mdlm; override
with --config.policy.diffusion_workdir=DIR), keeps it frozen and trains only the policy
(training/objectives/unmask_policy.py): a solved answer earns 1 - `policy.cost` * forwards / N
(N the answer length; a wrong one earns 0), `policy.group` the rollouts per prompt.
About 16 minutes for sudoku4 on 2 busy CPU cores (200 steps of 32 puzzles x 8 rollouts).
"""

import ml_collections

from configs import common
from configs import diffusion_tasks


def get_config(arg: str = 'sudoku4') -> ml_collections.ConfigDict:
  task, size = diffusion_tasks.task_and_size(arg)
  c = common.base_config()
  c.objective = 'unmask_policy'
  c.model = common.model_config(size, max_seq_len=256)
  c.diffusion = diffusion_tasks.diffusion_section(eval_samples=1)
  c.task = ml_collections.ConfigDict(dict(name=task))
  c.policy = ml_collections.ConfigDict(dict(
      diffusion_workdir=f'runs/diffusion/{task}_mdlm', group=8, cost=0.5))
  c.data.seq_len = diffusion_tasks.TASKS[task][0]
  if size == 'test':
    c.data.batch_size = 8  # a multiple of the test suite's 8 host devices
    c.policy.group = 2
    c.train.update(steps=6, warmup_steps=1, log_every=2, eval_every=3, eval_batches=1,
                   checkpoint_every=3, progress_bar=False)
  else:
    c.data.batch_size = 32
    c.train.update(steps=200, learning_rate=3e-4, warmup_steps=20, log_every=25,
                   eval_every=100, eval_batches=4, checkpoint_every=100, weight_decay=0.0)
  c.lock()
  return c
