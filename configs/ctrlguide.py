"""The attribute classifier for classifier-guided CtrlDiff / block diffusion decoding.

  python train.py --config=configs/diffusion_tasks.py:progression,ctrldiff --workdir=runs/diffusion/progression_ctrldiff
  python train.py --config=configs/ctrldiff.py:progression --workdir=runs/diffusion/progression_ctrldiff_sizes
  python train.py --config=configs/ctrlguide.py:progression --workdir=runs/diffusion/progression_ctrlguide
  python -m benchmarks.ctrlguide --run=runs/diffusion/progression_ctrlguide --threshold=0.5

The argument is `TASK[,SIZE]` (TASK a task of configs/diffusion_tasks.py that has an attribute
in `ATTRIBUTES`; SIZE the diffusion model's preset, default tiny; `test` for unit tests). The
run starts from the CtrlDiff run in `attribute.base_workdir` (default
runs/diffusion/TASK_ctrldiff_sizes), keeps its model and its 'ctrldiff' block-size predictor
frozen (`attribute.carry`) and fits only the classifier (models/attribute.py,
training/objectives/attribute.py) on noised rows labelled by the attribute. About 1 minute
on 2 busy CPU cores (300 steps of 64 rows; the classifier has ~0.1M parameters). The
progression task's prompt is empty, which sample.py refuses; decode it through the benchmark
(or `workbench.Workbench`); tasks with prompts decode with `python sample.py --workdir=RUN
--decoder=ctrldiff --decoder_config.guidance_scale=2`.
"""

import ml_collections

from configs import common
from configs import diffusion_tasks

ATTRIBUTES = {'progression': 'step_parity'}  # task -> data/tasks/attributes.py name


def get_config(arg: str = 'progression') -> ml_collections.ConfigDict:
  task, size = diffusion_tasks.task_and_size(arg or 'progression')
  if task not in ATTRIBUTES:
    raise ValueError(f'No attribute for task {task!r}; tasks with one: {sorted(ATTRIBUTES)}.')
  c = common.base_config()
  c.objective = 'attribute_classifier'
  c.model = common.model_config(size, max_seq_len=256)
  c.diffusion = diffusion_tasks.diffusion_section(eval_samples=1,
                                                  block_sizes=diffusion_tasks.CTRLDIFF_SIZES)
  c.task = ml_collections.ConfigDict(dict(name=task))
  c.attribute = ml_collections.ConfigDict(dict(
      name=ATTRIBUTES[task], base_workdir=f'runs/diffusion/{task}_ctrldiff_sizes',
      carry='ctrldiff', width=64, layers=2))
  c.data.seq_len = diffusion_tasks.TASKS[task][0]
  if size == 'test':
    c.data.batch_size = 8  # a multiple of the test suite's 8 host devices
    c.attribute.update(width=16, layers=1)
    c.train.update(steps=6, warmup_steps=1, log_every=2, eval_every=3, eval_batches=1,
                   checkpoint_every=3, progress_bar=False)
  else:
    c.data.batch_size = 64
    c.train.update(steps=300, learning_rate=2e-3, warmup_steps=20, log_every=50,
                   eval_every=100, eval_batches=4, checkpoint_every=100, weight_decay=0.0)
  c.lock()
  return c
