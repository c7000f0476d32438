"""CtrlDiff's block-size predictor for a block diffusion model trained over several sizes.

  python train.py --config=configs/diffusion_tasks.py:sudoku4,ctrldiff --workdir=runs/diffusion/sudoku4_ctrldiff
  python train.py --config=configs/ctrldiff.py:sudoku4 --workdir=runs/diffusion/sudoku4_ctrldiff_sizes
  python sample.py --workdir=runs/diffusion/sudoku4_ctrldiff_sizes --decoder=ctrldiff

The argument is `TASK[,SIZE]` (TASK a generated task of configs/diffusion_tasks.py; SIZE the
diffusion model's preset, default tiny; `test` for unit tests). The run starts from the block
diffusion run in `ctrldiff.diffusion_workdir` (default runs/diffusion/TASK_ctrldiff), keeps it
frozen and fits only the predictor (training/objectives/ctrldiff.py) on labels from the model:
whether one step decodes the next aligned block of each size right. About 5 minutes for
sudoku4 on 2 busy CPU cores (300 steps of 32 rows, 8 forwards of the base each).
"""

import ml_collections

from configs import common
from configs import diffusion_tasks


def get_config(arg: str = 'sudoku4') -> ml_collections.ConfigDict:
  task, size = diffusion_tasks.task_and_size(arg)
  c = common.base_config()
  c.objective = 'ctrldiff'
  c.model = common.model_config(size, max_seq_len=256)
  c.diffusion = diffusion_tasks.diffusion_section(eval_samples=1,
                                                  block_sizes=diffusion_tasks.CTRLDIFF_SIZES)
  c.task = ml_collections.ConfigDict(dict(name=task))
  c.ctrldiff = ml_collections.ConfigDict(dict(
      diffusion_workdir=f'runs/diffusion/{task}_ctrldiff', sizes=diffusion_tasks.CTRLDIFF_SIZES))
  c.data.seq_len = diffusion_tasks.TASKS[task][0]
  if size == 'test':
    c.data.batch_size = 8  # a multiple of the test suite's 8 host devices
    c.train.update(steps=6, warmup_steps=1, log_every=2, eval_every=3, eval_batches=1,
                   checkpoint_every=3, progress_bar=False)
  else:
    c.data.batch_size = 32
    c.train.update(steps=300, learning_rate=1e-3, warmup_steps=20, log_every=25,
                   eval_every=100, eval_batches=4, checkpoint_every=100, weight_decay=0.0)
  c.lock()
  return c
