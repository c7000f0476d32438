"""PIPO (Pair-In, Pair-Out): fine-tune a reasoning task's CoT run to read two-token chunks,
write two tokens per position and say when its second token can be trusted.

  python train.py --config=configs/latent_reasoning.py:task=prontoqa,method=cot,size=tiny,\\
steps=500 --workdir=runs/pipo/prontoqa/cot                      # the base, ~10 min
  python train.py --config=configs/pipo.py:task=prontoqa,size=tiny \\
      --workdir=runs/pipo/prontoqa/pipo            # ~6 min on a loaded 2-core host
  python sample.py --workdir=runs/pipo/prontoqa/pipo --decoder=pipo --decoder_config.threshold=0.5

The argument is comma-separated key=value pairs:
  task    a reasoning task (data/tasks/reasoning.py; default prontoqa)
  size    model preset: test (unit tests, fresh base), tiny (CPU; the base's size)
  init    the CoT run to start from (default runs/pipo/TASK/cot for tiny, '' for test)
  steps, lr, batch, single (pipo.single_prob), conf (pipo.conf_weight)

The objective (`training/objectives/pipo.py`) fine-tunes the base and trains params['pipo']
(models/pipo.py); the workdir then holds both, which `--decoder=pipo` reads. The `tiny` ProntoQA
base of this recipe is at chance on the task (benchmarks/results/latent_pipo.md). On modsum's
competent `test` base (size=test, init=runs/latent/modsum/cot) this recipe loses the task, and
`single=0` (pairs only) keeps it (latent_pipo_modsum.md, latent_pipo_modsum_pairs.md).
"""

import ml_collections

from configs import common

SIZES = {  # size: (steps, batch, learning rate, warmup)
    'test': (4, 8, 1e-3, 1),
    'tiny': (300, 32, 1e-3, 30),
}


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  opts = dict(task='prontoqa', size='tiny', init=None, steps='', lr='', batch='',
              single='0.25', conf='1.0')
  items = [item for item in (arg or '').split(',') if item]
  bad = [item for item in items if '=' not in item]
  if bad:
    raise ValueError(f'Config argument {bad[0]!r} is not key=value.')
  given = dict(item.split('=', 1) for item in items)
  unknown = sorted(set(given) - set(opts))
  if unknown:
    raise ValueError(f'Unknown config arguments {unknown}; known: {sorted(opts)}.')
  opts.update(given)
  size, task = opts['size'], opts['task']
  if size not in SIZES:
    raise ValueError(f'Unknown size {size!r}; use one of {sorted(SIZES)}.')
  steps, batch, lr, warmup = SIZES[size]
  init = opts['init']
  if init is None:
    init = '' if size == 'test' else f'runs/pipo/{task}/cot'
  c = common.base_config()
  c.objective = 'pipo'
  c.model = common.model_config(size, vocab_size=0)
  c.tokenizer.kind = 'byte'
  c.pipo = ml_collections.ConfigDict(dict(
      task=task, init_from=init, single_prob=float(opts['single']), mtp_weight=1.0,
      conf_weight=float(opts['conf'])))
  c.data.batch_size = int(opts['batch'] or batch)
  c.data.seq_len = 128  # for the tokens/s metric only; rows are laid out by the objective
  steps = int(opts['steps'] or steps)
  c.train.update(steps=steps, learning_rate=float(opts['lr'] or lr), warmup_steps=warmup,
                 weight_decay=0.0, log_every=max(1, min(50, steps // 4)), eval_every=steps,
                 eval_batches=4, checkpoint_every=steps, keep_checkpoints=1,
                 progress_bar=False)
  if size == 'test':
    c.train.update(async_checkpointing=False)
  c.lock()
  return c
