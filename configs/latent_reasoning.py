"""Latent reasoning on generated tasks: CoT, no-CoT, Coconut (+ SIM-CoT), pause tokens.

  python train.py --config=configs/latent_reasoning.py:task=prosqa,method=cot,size=tiny \\
      --workdir=runs/latent/prosqa/cot
  python train.py --config=configs/latent_reasoning.py:task=prosqa,method=coconut,stage=1,\\
init=runs/latent/prosqa/cot --workdir=runs/latent/prosqa/coconut1

The argument is comma-separated key=value pairs:
  task       prosqa | prontoqa | multiplication | parity | modsum (data/tasks/reasoning.py)
  method     cot | nocot | coconut | pause | sim_cot (training/objectives/coconut.py,
             sim_cot.py); the objective of the same name
  stage      curriculum stage (coconut, pause, sim_cot); > max_stage = every step latent
  init       workdir whose parameters start this run (the previous stage); '' = fresh
  size       model preset: test (unit tests), tiny (CPU), small (GPU; byte vocabulary)
  steps      optimizer steps of this run (default per size)
  c, max_stage, mix (uniform_prob), sim (SIM-CoT weight), batch, lr: see the objectives

One run is one curriculum stage (the optimizer resets between stages, as in Coconut);
`python -m benchmarks.latent_train --task=prosqa --size=tiny` runs every stage of every
method in order. Times: size=tiny, 400 steps, batch 32: ~4 min per stage on 2 CPU cores;
size=small: GPU (see benchmarks/latent.py).
"""

import ml_collections

from configs import common

MAX_STAGE = {'prosqa': 4, 'prontoqa': 4, 'multiplication': 3, 'parity': 4,
             'modsum': 4}
SIZES = {
    # size: (steps per stage, batch, learning rate, warmup)
    'test': (4, 8, 1e-3, 1),
    'tiny': (400, 32, 1e-3, 40),
    'small': (3000, 128, 3e-4, 200),
}


def _parse(arg: str) -> dict[str, str]:
  out = {}
  for item in filter(None, (arg or '').split(',')):
    if '=' not in item:
      raise ValueError(f'Config argument {item!r} is not key=value.')
    k, v = item.split('=', 1)
    out[k.strip()] = v.strip()
  return out


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  opts = dict(task='prosqa', method='cot', stage='0', init='', size='tiny', steps='',
              c='1', max_stage='', mix='0.0', sim='1.0', batch='', lr='')
  given = _parse(arg)
  unknown = sorted(set(given) - set(opts))
  if unknown:
    raise ValueError(f'Unknown config arguments {unknown}; known: {sorted(opts)}.')
  opts.update(given)
  size, task = opts['size'], opts['task']
  if size not in SIZES:
    raise ValueError(f'Unknown size {size!r}; use one of {sorted(SIZES)}.')
  if task not in MAX_STAGE:
    raise ValueError(f'Unknown task {task!r}; use one of {sorted(MAX_STAGE)}.')
  steps, batch, lr, warmup = SIZES[size]
  c = common.base_config()
  c.objective = opts['method']
  c.model = common.model_config(size, vocab_size=0)
  c.tokenizer.kind = 'byte'
  c.latent = ml_collections.ConfigDict(dict(
      task=task, stage=int(opts['stage']), c=int(opts['c']),
      max_stage=int(opts['max_stage'] or MAX_STAGE[task]), pad_to_max=True,
      uniform_prob=float(opts['mix']), init_from=opts['init'], fill='cache',
      sim_cot_weight=float(opts['sim']), aux_layers=1))
  c.data.batch_size = int(opts['batch'] or batch)
  c.data.seq_len = 128  # for the tokens/s metric only; rows are laid out by the objective
  steps = int(opts['steps'] or steps)
  c.train.update(steps=steps, learning_rate=float(opts['lr'] or lr), warmup_steps=warmup,
                 weight_decay=0.01, log_every=max(1, min(50, steps // 4)),
                 eval_every=steps, eval_batches=4, checkpoint_every=steps,
                 keep_checkpoints=1, progress_bar=False)
  if size == 'test':
    c.train.update(async_checkpointing=False)
  c.lock()
  return c
