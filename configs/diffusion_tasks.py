"""Diffusion and AR models on generated exact-match tasks (sudoku, countdown, infilling).

  python train.py --config=configs/diffusion_tasks.py:sudoku4,mdlm --workdir=runs/sudoku4_mdlm
  python train.py --config=configs/diffusion_tasks.py:sudoku4,ar --workdir=runs/sudoku4_ar
  python train.py --config=configs/diffusion_tasks.py:countdown3,mdlm --workdir=runs/cd3_mdlm
  python train.py --config=configs/diffusion_tasks.py:infill,bd3 --workdir=runs/infill_bd3
  python train.py --config=configs/diffusion_tasks.py:sudoku4,ilm --workdir=runs/sudoku4_ilm

The argument is `TASK,KIND[,SIZE]`: TASK in sudoku4, sudoku9, countdown3, countdown4, infill,
progression (a whole arithmetic progression, for in-place infilling of unknown length), star3,
star2 (a path-star graph's path from centre to goal, data/tasks/stargraph.py); KIND
in mdlm, dream (logit shift), bd3, wedlm, asarm (any-subset AR, for ASSD), ar, ilm (insertion
LM: section `insertion`, decoder 'insertion'), ctrldiff (block diffusion over blocks of
2, 4, 8 and 16 drawn per row, for the 'ctrldiff' decoder: configs/ctrldiff.py); SIZE a
preset (default tiny). Rows are <bos> prompt <sep> answer <eos>...; only the answer is a
target (never noised prompts).
On 2 otherwise idle CPU cores the tiny runs take about 10 minutes (sudoku4: 1500 steps of 32
rows x 36 tokens); 9x9 sudoku needs a GPU-sized run (small preset) to be solved at all.
"""

import ml_collections

from configs import common

KINDS = {  # kind -> (objective, shift)
    'mdlm': ('masked_diffusion', False),
    'dream': ('masked_diffusion', True),
    'bd3': ('block_diffusion', False),
    'wedlm': ('wedlm', True),
    'asarm': ('as_arm', False),
    'ar': ('ar_task', False),
    'ilm': ('insertion', False),  # insertion LM (training/objectives/insertion.py)
    'ctrldiff': ('block_diffusion', False),  # blocks of every size in CTRLDIFF_SIZES
}
CTRLDIFF_SIZES = '2,4,8,16'  # kind ctrldiff: diffusion.block_sizes (decoder 'ctrldiff')
# task -> (seq_len, batch size, steps) for the tiny preset; seq_len >= the task's row length.
TASKS = {
    'sudoku4': (36, 32, 1500),
    'sudoku9': (168, 32, 3000),
    'countdown3': (48, 64, 2000),
    'countdown4': (64, 64, 3000),
    'infill': (32, 64, 1500),
    'progression': (32, 32, 1500),
    'star3': (48, 32, 6000),
    'star2': (24, 32, 6000),
}


def diffusion_section(**overrides) -> ml_collections.ConfigDict:
  """The `diffusion` config section of a diffusion run (and of the runs trained on one)."""
  return ml_collections.ConfigDict(dict(dict(
      mask_id=-1, shift=False, noise_eps=1e-3, sampling_eps=1e-3, loss_form='mdlm',
      block_size=16, eval_samples=4, init_from='', ar_weight=1.0, reinit_tokens=''),
      **overrides))


def task_and_size(arg: str) -> tuple[str, str]:
  """(task, size preset) of a 'TASK[,SIZE]' config argument (task 'sudoku4' and size 'tiny'
  by default)."""
  parts = (arg or 'sudoku4').split(',')
  task, size = parts[0], parts[1] if len(parts) > 1 else 'tiny'
  if task not in TASKS:
    raise ValueError(f'Unknown task {task!r}; choose one of {sorted(TASKS)}.')
  return task, size


def get_config(arg: str = 'sudoku4,mdlm') -> ml_collections.ConfigDict:
  parts = (arg or 'sudoku4,mdlm').split(',')
  if len(parts) < 2:
    raise ValueError(f'Use TASK,KIND[,SIZE]; got {arg!r}.')
  task, kind, size = parts[0], parts[1], parts[2] if len(parts) > 2 else 'tiny'
  if task not in TASKS:
    raise ValueError(f'Unknown task {task!r}; choose one of {sorted(TASKS)}.')
  if kind not in KINDS:
    raise ValueError(f'Unknown kind {kind!r}; choose one of {sorted(KINDS)}.')
  objective, shift = KINDS[kind]
  seq_len, batch, steps = TASKS[task]
  c = common.base_config()
  c.objective = objective
  c.model = common.model_config(size, max_seq_len=256)
  c.diffusion = diffusion_section(shift=shift,
                                  block_sizes=CTRLDIFF_SIZES if kind == 'ctrldiff' else '')
  if objective == 'insertion':
    c.insertion = ml_collections.ConfigDict(dict(eos_id=-1, stop_weight=1.0, eval_samples=4))
  c.task = ml_collections.ConfigDict(dict(name=task))
  c.data.seq_len, c.data.batch_size = seq_len, batch
  if size == 'test':
    c.data.batch_size = 8
    c.train.update(steps=20, warmup_steps=2, log_every=5, eval_every=10, eval_batches=2,
                   checkpoint_every=10, progress_bar=False)
    c.diffusion.eval_samples = 1
    if objective == 'insertion':
      c.insertion.eval_samples = 1
  else:
    c.train.update(steps=steps, learning_rate=2e-3, warmup_steps=100, log_every=100,
                   eval_every=500, eval_batches=4, checkpoint_every=500, weight_decay=0.01)
  c.lock()
  return c
