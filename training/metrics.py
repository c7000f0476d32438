"""Metrics to stdout, a JSONL file and TensorBoard event files; the loss-curve plot."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Mapping

import jax
import numpy as np

METRICS_FILE = 'metrics.jsonl'
PLOT_FILE = 'loss_curve.png'


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch when it
  is installed (about 7 s on 2 CPU cores, at every start of train.py) only to recognise torch
  tensors, and we log floats. Whoever imported torch already keeps it."""
  if 'torch' in sys.modules or 'tensorboardX' in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    return SummaryWriter
  sys.modules['torch'] = None  # `import torch` raises ImportError while this is set
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules['torch']
  return SummaryWriter


class MetricWriter:
  """Writes scalars under a prefix ('train', 'eval') per step; process 0 only."""

  def __init__(self, workdir: str, *, tensorboard: bool = True, echo=print):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, METRICS_FILE)
    self.echo = echo
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        self._tb = _summary_writer_class()(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, prefix: str, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    values = {k: float(np.asarray(v)) for k, v in scalars.items()}
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': int(step), 'split': prefix, **values}) + '\n')
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(f'{prefix}/{k}', v, int(step))
      self._tb.flush()
    shown = ' '.join(f'{k}={v:.4g}' for k, v in sorted(values.items()))
    self.echo(f'[{prefix}] step {step}: {shown}')

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_loss_curve(workdir: str) -> str | None:
  """Plots train and eval loss against step into workdir/loss_curve.png; returns the path."""
  rows = read_metrics(workdir)
  if not rows or jax.process_index() != 0:
    return None
  # Here, not at the top: Agg on import would switch a notebook's backend; pyplot takes ~0.4 s.
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for split, style in (('train', '-'), ('eval', 'o-')):
    pts = {r['step']: r['loss'] for r in rows if r['split'] == split and 'loss' in r}
    if pts:  # a resumed run may log a step twice: keep the last value.
      steps = sorted(pts)
      ax.plot(steps, [pts[s] for s in steps], style, label=f'{split} loss', markersize=3)
  ax.set_xlabel('step')
  ax.set_ylabel('cross-entropy (nats/token)')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  path = os.path.join(workdir, PLOT_FILE)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def bits_per_byte(nll_sum: float, num_bytes: float) -> float:
  return nll_sum / max(num_bytes, 1.0) / math.log(2.0)
