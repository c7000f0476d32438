"""Loss by position beyond the training context: DeltaNet / DeltaProduct / hybrid vs attention.

  # train the models of configs/deltanet.py that have no finished run yet, then evaluate at
  # 8x the training length (tiny: 4 x ~3-12 min on 2 free CPU cores):
  python -m benchmarks.length_extrapolation --variants=attention,deltanet,deltaproduct2,hybrid \
      --size=tiny --eval_len=1024 --train
  # evaluate finished runs only (e.g. trained with train.py):
  python -m benchmarks.length_extrapolation --workdirs=runs/attn,runs/deltanet --eval_len=1024

Evaluation: validation rows of the run's own corpus packed to `eval_len` tokens (documents
concatenated, as in training), one no-cache forward per row; the next-token loss (nats) at
each position is averaged over rows. The table gives the mean loss over position ranges in
multiples of the training length; the plot the (smoothed) curve. Writes
benchmarks/results/length_extrapolation.md and length_extrapolation.png.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from configs import deltanet
import data as data_lib
from training import trainer
from workdir import checkpoint
from workdir import loading


def _finished(workdir: str, steps: int) -> bool:
  if not os.path.isdir(os.path.join(workdir, checkpoint.CHECKPOINT_DIR)):
    return False
  latest = checkpoint.Checkpointer(workdir, read_only=True, async_save=False).latest_step()
  return latest is not None and latest >= steps


def train_variants(variants: list[str], size: str, runs_dir: str) -> list[str]:
  """Trains configs/deltanet.py:<variant>,<size> into runs_dir/<variant>_<size> if needed."""
  workdirs = []
  for variant in variants:
    config = deltanet.get_config(f'{variant},{size}')
    workdir = os.path.join(runs_dir, f'{variant}_{size}')
    if not _finished(workdir, config.train.steps):
      print(f'training {variant} ({size}) in {workdir}', flush=True)
      trainer.train_and_evaluate(config, workdir)
    workdirs.append(workdir)
  return workdirs


def loss_by_position(workdir: str, eval_len: int, batch: int, batches: int
                     ) -> tuple[np.ndarray, dict]:
  """Mean next-token loss at each position [eval_len] and facts about the run."""
  run = loading.load_model(workdir)
  dc = data_lib.DataConfig(**dict(run.config['data'], seq_len=eval_len, batch_size=batch))
  rows = data_lib.make_eval_batches(dc, run.tokenizer, max_batches=batches)
  model = run.model

  @jax.jit
  def nll(params, tokens_BxT1):
    logits = model.apply({'params': params}, tokens_BxT1[:, :-1]).logits_BxTxV
    logp = jax.nn.log_softmax(logits, -1)
    return -jnp.take_along_axis(logp, tokens_BxT1[:, 1:, None], -1)[..., 0]

  per_row = np.concatenate([np.asarray(nll(run.params, b['tokens'])) for b in rows])
  cfg = run.model_config
  kinds = sorted(set(cfg.layer_types))
  facts = dict(name=os.path.basename(os.path.normpath(workdir)), step=run.step,
               params=cfg.num_params(), train_len=run.config['data']['seq_len'],
               layers='+'.join(f'{cfg.layer_types.count(k)}x{k}' for k in kinds),
               n_h=cfg.delta_num_householder if 'deltaproduct' in kinds else '-',
               rows=per_row.shape[0])
  return per_row.mean(0), facts


def _plot(curves: list[tuple[dict, np.ndarray]], train_len: int) -> str | None:
  try:
    plt = common.pyplot()
  except ImportError:
    return None
  fig, ax = plt.subplots(figsize=(7, 4))
  w = 16
  for facts, curve in curves:
    smooth = np.convolve(curve, np.ones(w) / w, mode='valid')
    ax.plot(np.arange(len(smooth)) + w, smooth, label=f"{facts['name']} ({facts['layers']})")
  ax.axvline(train_len, color='grey', lw=0.8, ls='--')
  ax.set_xscale('log')
  ax.set_xlabel('position (log)')
  ax.set_ylabel(f'next-token loss (nats), {w}-position mean')
  ax.legend(fontsize=8)
  fig.tight_layout()
  path = os.path.join(common.RESULTS_DIR, 'length_extrapolation.png')
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--workdirs', default='', help='comma-separated finished runs')
  ap.add_argument('--variants', default='attention,deltanet,deltaproduct2,hybrid',
                  help='configs/deltanet.py variants (with --train or under --runs_dir)')
  ap.add_argument('--size', default='tiny')
  ap.add_argument('--runs_dir', default='runs/length_extrapolation')
  ap.add_argument('--train', action='store_true', help='train variants without a finished run')
  ap.add_argument('--eval_len', type=int, default=1024)
  ap.add_argument('--batch', type=int, default=4)
  ap.add_argument('--batches', type=int, default=4)
  ap.add_argument('--name', default='length_extrapolation')
  args = ap.parse_args()
  if args.workdirs:
    workdirs = args.workdirs.split(',')
  elif args.train:
    workdirs = train_variants(args.variants.split(','), args.size, args.runs_dir)
  else:
    workdirs = [os.path.join(args.runs_dir, f'{v}_{args.size}') for v in args.variants.split(',')]
  curves = []
  for workdir in workdirs:
    curve, facts = loss_by_position(workdir, args.eval_len, args.batch, args.batches)
    print(facts, f'mean loss {curve.mean():.3f}', flush=True)
    curves.append((facts, curve))
  train_len = curves[0][0]['train_len']
  edges = [0, train_len]
  while edges[-1] < args.eval_len:
    edges.append(min(2 * edges[-1], args.eval_len))
  header = ['run', 'layers', 'n_h', 'params', 'step', 'train len'] + [
      f'loss {lo + 1}-{hi}' for lo, hi in zip(edges, edges[1:])]
  rows = [[f['name'], f['layers'], f['n_h'], f['params'], f['step'], f['train_len']] +
          [float(c[lo:hi].mean()) for lo, hi in zip(edges, edges[1:])] for f, c in curves]
  plot = _plot(curves, train_len)
  body = (f'Mean next-token loss (nats) over position ranges on validation rows packed to '
          f'{args.eval_len} tokens ({curves[0][0]["rows"]} rows per model). Trained at length '
          f'{train_len}; positions after it are extrapolation.\n\n'
          + common.markdown_table(header, rows)
          + (f'\n\n![loss by position]({os.path.basename(plot)})\n' if plot else '\n'))
  print(common.write_results(args.name, 'Length extrapolation: loss by position', body))


if __name__ == '__main__':
  main()
