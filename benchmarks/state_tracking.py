"""State tracking: accuracy against length for DeltaProduct (n_h, beta range, layers) vs attention.

Group word problems (data/tasks/state_tracking.py) with a label at every position; train at
length 128, test at length 512; accuracy per position (mean over test sequences).

  # the paper's grid on a GPU (one command; ~hours on one H100, cells resume if interrupted):
  python -m benchmarks.state_tracking --preset=paper
  # the scaled-down CPU protocol (what was run on 2 shared CPU cores, a few cells per call):
  nice -n 10 python -m benchmarks.state_tracking --preset=cpu --tasks=S3 --n_h=2 --beta=2 \
      --attention=0        # one cell; without --attention=0 the task's attention cell too
  # rebuild the table and plot from the cells recorded so far:
  python -m benchmarks.state_tracking --report_only

Presets (every flag below overrides them):
  paper  DeltaProduct paper protocol (Siems et al. 2025, automl/DeltaProduct state_tracking):
         tasks parity, Z5, S3, S4, A5, S5; n_h 1-4; beta [0,1] and [0,2]; 1 and 2 layers;
         attention baseline; d_model 128, 8 heads, no conv, no gates; AdamW lr 1e-3 cosine,
         batch 2048, 4900 steps (= 100 epochs of 100k samples; here fresh samples per step).
  cpu    scaled down for 2 shared CPU cores: width 64, 4 heads of 16, MLP 128, batch 32,
         1000 steps (training stops after 12 minutes per cell), the naive scan; same lr,
         schedule and lengths. Patterns that need long training at batch 2048 may not show.

Each finished cell is appended to benchmarks/results/state_tracking_cells.jsonl (cells already
there are skipped unless --rerun); the table benchmarks/results/state_tracking.md and the plot
state_tracking.png are rebuilt from all recorded cells after every call, with a second table
saying which of the expected patterns (EXPECTED) the recorded cells reproduce and which cells
were not run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from data.tasks import state_tracking as tasks_lib
from models import ModelConfig, Transformer, init_params

CELLS_FILE = os.path.join(common.RESULTS_DIR, 'state_tracking_cells.jsonl')
PRESETS = {
    'paper': dict(tasks='parity,Z5,S3,S4,A5,S5', n_h='1,2,3,4', beta='1,2', layers='1,2',
                  attention='1', batch=2048, steps=4900, warmup=100, eval_samples=1024,
                  d_model=128, heads=8, mlp_dim=512, chunk_size=64, max_train_seconds=0),
    # Scaled down for 2 shared CPU cores: half the width, batch 32, the naive scan (faster
    # than the chunked form on CPU at these sizes; see benchmarks/results/deltaproduct.md).
    'cpu': dict(tasks='parity,S3', n_h='1,2', beta='1,2', layers='1', attention='1',
                batch=32, steps=1000, warmup=50, eval_samples=256, d_model=64, heads=4,
                mlp_dim=128, chunk_size=4096, max_train_seconds=720),
}


@dataclasses.dataclass(frozen=True)
class Cell:
  task: str
  kind: str  # 'delta' | 'attention'
  n_h: int
  beta: int  # 1: beta in [0, 1]; 2: beta in [0, 2]
  layers: int

  @property
  def name(self) -> str:
    if self.kind == 'attention':
      return f'{self.task} attention L{self.layers}'
    return f'{self.task} n_h={self.n_h} beta[0,{self.beta}] L{self.layers}'


def model_config(cell: Cell, vocab: int, args) -> ModelConfig:
  kind = 'deltaproduct' if cell.kind == 'delta' else 'attention'
  head_dim = args.d_model // args.heads
  return ModelConfig(
      vocab_size=vocab, d_model=args.d_model, num_layers=cell.layers, num_heads=args.heads,
      num_kv_heads=args.heads, head_dim=head_dim, mlp_dim=args.mlp_dim,
      max_seq_len=args.test_len, tie_embeddings=False, dtype=args.dtype,
      layer_types=(kind,) * cell.layers, delta_num_householder=max(cell.n_h, 1),
      delta_allow_neg_eigval=cell.beta == 2, delta_use_gate=False,
      delta_use_output_gate=False, delta_conv_size=0, delta_chunk_size=args.chunk_size)


def run_cell(cell: Cell, args) -> dict:
  """Trains one model on fresh samples at train_len and evaluates per-position accuracy."""
  task = tasks_lib.make_task(cell.task, args.train_len)
  cfg = model_config(cell, task.vocab_size, args)
  model = Transformer(cfg)
  params = init_params(model, jax.random.key(args.seed))
  schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, args.warmup, args.steps,
                                                args.lr * 0.01)
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(schedule, weight_decay=args.weight_decay,
                               mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
  opt_state = tx.init(params)

  def loss_fn(p, inputs, targets):
    logits = model.apply({'params': p}, inputs).logits_BxTxV
    logp = jax.nn.log_softmax(logits, -1)
    nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return nll.mean(), (jnp.argmax(logits, -1) == targets).mean()

  @jax.jit
  def train_step(p, o, inputs, targets):
    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, inputs, targets)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss, acc

  @jax.jit
  def correct(p, inputs, targets):
    return jnp.argmax(model.apply({'params': p}, inputs).logits_BxTxV, -1) == targets

  it = tasks_lib.train_iterator(cell.task, args.train_len, seed=args.seed,
                                batch_size=args.batch)
  t0 = time.perf_counter()
  losses = []
  steps_done = 0
  for step in range(args.steps):
    if args.max_train_seconds and time.perf_counter() - t0 > args.max_train_seconds:
      print(f'  [{cell.name}] stopping at step {step}: --max_train_seconds reached', flush=True)
      break
    batch = next(it)
    params, opt_state, loss, acc = train_step(params, opt_state, batch['inputs'],
                                              batch['targets'])
    steps_done = step + 1
    if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
      losses.append((step + 1, float(loss), float(acc)))
      print(f'  [{cell.name}] step {step + 1} loss {float(loss):.4f} acc {float(acc):.3f} '
            f'({time.perf_counter() - t0:.0f}s)', flush=True)
  train_s = time.perf_counter() - t0
  test = tasks_lib.eval_batches(cell.task, args.test_len, seed=args.seed,
                                batch_size=min(args.eval_samples, 256),
                                num_batches=max(args.eval_samples // 256, 1))
  acc_T = np.mean(np.concatenate([np.asarray(correct(params, b['inputs'], b['targets']))
                                  for b in test]), axis=0)
  if not losses or losses[-1][0] != steps_done:
    losses.append((steps_done, float(loss), float(acc)))
  return dict(cell=dataclasses.asdict(cell), name=cell.name, steps=steps_done,
              planned_steps=args.steps,
              batch=args.batch, lr=args.lr, train_len=args.train_len,
              test_len=args.test_len, d_model=args.d_model, heads=args.heads,
              mlp_dim=args.mlp_dim, chunk_size=args.chunk_size,
              train_seconds=round(train_s, 1), device=jax.devices()[0].device_kind,
              final_train_loss=losses[-1][1], final_train_acc=losses[-1][2],
              acc_by_position=[round(float(a), 4) for a in acc_T],
              num_params=cfg.num_params(),
              command='python -m benchmarks.state_tracking ' + ' '.join(sys.argv[1:]),
              date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))


# The patterns the table should reproduce (DeltaProduct paper, Siems et al. 2025; Grazzi et al.
# 2024): (what, the cells it is read from, 'solves' | 'fails').
EXPECTED = [
    ('parity: n_h=1 with beta in [0,2] solves it', ['parity n_h=1 beta[0,2] L1'], 'solves'),
    ('parity: n_h=1 with beta in [0,1] fails', ['parity n_h=1 beta[0,1] L1'], 'fails'),
    ('S3, 1 layer: n_h=2 with beta in [0,2] solves it', ['S3 n_h=2 beta[0,2] L1'], 'solves'),
    ('S3, 1 layer: n_h=1 fails', ['S3 n_h=1 beta[0,1] L1', 'S3 n_h=1 beta[0,2] L1'], 'fails'),
    ('S3, 1 layer: n_h=2 with beta in [0,1] fails (negative eigenvalues needed)',
     ['S3 n_h=2 beta[0,1] L1'], 'fails'),
    ('S5, 1 layer: n_h=4 with beta in [0,2] solves it', ['S5 n_h=4 beta[0,2] L1'], 'solves'),
    ('S5, 1 layer: n_h<=3 fails', [f'S5 n_h={n} beta[0,2] L1' for n in (1, 2, 3)], 'fails'),
    ('attention (1 layer) fails beyond the training length',
     [f'{t} attention L1' for t in ('parity', 'S3', 'S5')], 'fails'),
]
SOLVED, FAILED = 0.99, 0.9  # mean accuracy over all test positions; over the extrapolated ones


def _verdict(rec: dict, train_len: int) -> str:
  acc = rec['acc_by_position']
  if float(np.mean(acc)) >= SOLVED:
    return 'solves'
  if float(np.mean(acc[train_len:])) < FAILED:
    return 'fails'
  return 'partial'


def expected_patterns(cells: dict[str, dict], train_len: int) -> str:
  """A table: each expected pattern, the cells run for it, reproduced / not / not run."""
  rows = []
  for what, names, want in EXPECTED:
    ran = [n for n in names if n in cells]
    missing = [n for n in names if n not in cells]
    got = {n: _verdict(cells[n], train_len) for n in ran}
    if not ran:
      status = 'not run'
    elif all(v == want for v in got.values()):
      status = 'reproduced' + (' (partly run)' if missing else '')
    else:
      status = 'NOT reproduced'
    detail = '; '.join(
        f'{n}: {v} (acc {np.mean(cells[n]["acc_by_position"][:train_len]):.3f} at 1-{train_len}, '
        f'{np.mean(cells[n]["acc_by_position"][train_len:]):.3f} beyond; '
        f'{cells[n]["steps"]} steps x {cells[n]["batch"]})' for n, v in got.items())
    rows.append([what, status, detail or '-', ', '.join(missing) or '-'])
  return common.markdown_table(['expected', 'status', 'cells run: verdict', 'not run'], rows)


def _bucket(acc: list[float], lo: int, hi: int) -> float:
  return float(np.mean(acc[lo:hi])) if hi <= len(acc) else float('nan')


def write_report(train_len: int = 128) -> str:
  """Table + plot from every recorded cell (the newest record of each cell wins)."""
  if not os.path.exists(CELLS_FILE):
    raise FileNotFoundError(f'No cells recorded yet in {CELLS_FILE}.')
  cells: dict[str, dict] = {}
  with open(CELLS_FILE) as f:
    for line in f:
      rec = json.loads(line)
      cells[rec['name']] = rec
  rows = []
  order = lambda r: (r['cell']['task'], r['cell']['layers'], r['cell']['kind'] != 'delta',
                     r['cell']['n_h'], r['cell']['beta'])
  for rec in sorted(cells.values(), key=order):
    acc = rec['acc_by_position']
    rows.append([rec['name'], rec['steps'], rec['batch'], _bucket(acc, 0, train_len),
                 _bucket(acc, train_len, 2 * train_len), _bucket(acc, 2 * train_len, len(acc)),
                 acc[-1], _solved_length(acc), rec['train_seconds'], rec['device']])
  table = common.markdown_table(
      ['cell', 'steps', 'batch', f'acc 1-{train_len}', f'acc {train_len + 1}-{2 * train_len}',
       f'acc {2 * train_len + 1}-512', 'acc @512', 'solved to (>=99%)', 'train s', 'device'],
      rows)
  plot = _plot(cells, train_len)
  body = (f'Accuracy of the label (prefix product) per position, trained at length {train_len},'
          ' tested at 512, averaged over the positions of each range. "solved to" is the last '
          'position up to which the running accuracy stays >= 99% (0 = never). Each cell ran '
          'the protocol of the preset in its command (listed at the end; `--preset=cpu` is the '
          'scaled-down one: 1 layer of width 64, batch 32, <= 1000 steps, no conv or gates; '
          'see the module docstring), so a failure at that budget can be undertraining: the '
          'in-distribution accuracy (1-' + str(train_len) + ') tells the two apart.\n\n' + table +
          '\n\n## Expected patterns\n\nA cell "solves" a task when its mean accuracy over '
          f'all test positions is >= {SOLVED:.0%} and "fails" when its mean accuracy beyond the '
          f'training length is < {FAILED:.0%} ("partial" otherwise). Cells not run here need '
          'the GPU protocol (`--preset=paper`).\n\n' + expected_patterns(cells, train_len) +
          (f'\n\n![accuracy by position]({os.path.basename(plot)})\n' if plot else '\n') +
          '\nCells: ' + CELLS_FILE.split('benchmarks/')[-1] + ' (one JSON record per cell, '
          'with the per-position accuracy). The command above rebuilt this file; each cell was '
          'trained by:\n\n' + '\n'.join(
              f'- {rec["name"]}: ' + (f'`{rec["command"]}` ({rec.get("date", "date not recorded")}'
                                      f', {rec["device"]})' if rec.get('command') else
                                      'command not recorded (an earlier version of this script)')
              for rec in sorted(cells.values(), key=order)) + '\n')
  return common.write_results('state_tracking', 'State tracking: accuracy by length', body)


def _solved_length(acc: list[float], threshold: float = 0.99) -> int:
  below = [i for i, a in enumerate(acc) if a < threshold]
  return below[0] if below else len(acc)


def _plot(cells: dict[str, dict], train_len: int) -> str | None:
  try:
    plt = common.pyplot()
  except ImportError:
    return None
  tasks = sorted({r['cell']['task'] for r in cells.values()})
  fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
  for ax, task in zip(axes[0], tasks):
    for rec in sorted(cells.values(), key=lambda r: r['name']):
      if rec['cell']['task'] != task:
        continue
      acc = np.asarray(rec['acc_by_position'])
      smooth = np.convolve(acc, np.ones(8) / 8, mode='valid')
      style = '--' if rec['cell']['kind'] == 'attention' else '-'
      ax.plot(np.arange(len(smooth)) + 8, smooth, style, label=rec['name'].split(' ', 1)[1])
    ax.axvline(train_len, color='grey', lw=0.8)
    ax.set_title(task)
    ax.set_xlabel('position')
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
  axes[0][0].set_ylabel('accuracy')
  fig.tight_layout()
  path = os.path.join(common.RESULTS_DIR, 'state_tracking.png')
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _ints(s: str) -> list[int]:
  return [int(x) for x in s.split(',') if x]


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--preset', default='cpu', choices=sorted(PRESETS))
  for name in ('tasks', 'n_h', 'beta', 'layers'):
    ap.add_argument(f'--{name}', default=None)
  ap.add_argument('--attention', default=None, choices=['0', '1'],
                  help='also train the attention baseline per task and layer count')
  ap.add_argument('--only_attention', action='store_true')
  for name in ('batch', 'steps', 'warmup', 'eval_samples', 'max_train_seconds'):
    ap.add_argument(f'--{name}', type=int, default=None)
  ap.add_argument('--lr', type=float, default=1e-3)
  ap.add_argument('--weight_decay', type=float, default=0.0)
  ap.add_argument('--train_len', type=int, default=128)
  ap.add_argument('--test_len', type=int, default=512)
  for name in ('d_model', 'heads', 'mlp_dim', 'chunk_size'):
    ap.add_argument(f'--{name}', type=int, default=None)
  ap.add_argument('--dtype', default='float32')
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--log_every', type=int, default=100)
  ap.add_argument('--rerun', action='store_true', help='run cells already recorded again')
  ap.add_argument('--report_only', action='store_true')
  args = ap.parse_args()
  for key, value in PRESETS[args.preset].items():
    if getattr(args, key, None) is None:
      setattr(args, key, value)
  args.attention = args.attention == '1'
  if not args.report_only:
    done = set()
    if os.path.exists(CELLS_FILE) and not args.rerun:
      with open(CELLS_FILE) as f:
        done = {json.loads(line)['name'] for line in f}
    cells = []
    for task in args.tasks.split(','):
      for layers in _ints(args.layers):
        if not args.only_attention:
          cells += [Cell(task, 'delta', n, b, layers) for n in _ints(args.n_h)
                    for b in _ints(args.beta)]
        if args.attention or args.only_attention:
          cells.append(Cell(task, 'attention', 0, 0, layers))
    os.makedirs(common.RESULTS_DIR, exist_ok=True)
    for cell in cells:
      if cell.name in done:
        print(f'skip (recorded): {cell.name}')
        continue
      print(f'cell: {cell.name}', flush=True)
      rec = run_cell(cell, args)
      print(f'  -> acc 1-{args.train_len}: {_bucket(rec["acc_by_position"], 0, args.train_len):.3f}'
            f', @{args.test_len}: {rec["acc_by_position"][-1]:.3f}', flush=True)
      with open(CELLS_FILE, 'a') as f:
        f.write(json.dumps(rec) + '\n')
  print(write_report(args.train_len))


if __name__ == '__main__':
  main()
