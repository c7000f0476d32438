"""The notebooks run top to bottom on CPU with tiny settings (CI), via nbclient.

Each notebook has a cell tagged `parameters` holding its real (Colab) settings; like papermill,
`execute` inserts a cell after it that overrides them (the `test` preset, a few steps and
tokens). On Colab the set-up cell clones and installs; here it uses this checkout.
"""

import json
import os

import pytest

import testlib

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, 'notebooks')
SMALL = dict(TEMPERATURES=(0.0, 1.0), NUM_PROMPTS=2, PROMPT_CHARS=40, MAX_NEW_TOKENS=8,
             REPEATS=1)


def execute(name: str, params: dict, devices: int = 1):
  """Runs notebooks/<name>.ipynb with `params` injected; returns the executed notebook."""
  nb = nbformat.read(os.path.join(NOTEBOOKS, f'{name}.ipynb'), as_version=4)
  tagged = [i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', [])]
  assert len(tagged) == 1, f'{name} needs exactly one cell tagged "parameters"'
  declared = {line.split('=')[0].strip() for line in nb.cells[tagged[0]].source.splitlines()
              if '=' in line and not line.startswith((' ', '#'))}
  unknown = set(params) - declared
  assert not unknown, f'{name} has no parameters {unknown}'
  cell = nbformat.v4.new_code_cell('\n'.join(f'{k} = {v!r}' for k, v in params.items()))
  cell.metadata['tags'] = ['injected-parameters']
  nb.cells.insert(tagged[0] + 1, cell)
  env = testlib.subprocess_env(
      JAX_PLATFORMS='cpu', XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
      MPLBACKEND='Agg')
  client = nbclient.NotebookClient(nb, timeout=600, startup_timeout=180, kernel_name='python3',
                                   resources={'metadata': {'path': NOTEBOOKS}})
  client.execute(env=env)
  return nb


def _outputs(nb, kind: str) -> list[str]:
  out = []
  for c in nb.cells:
    for o in c.get('outputs', []):
      if o.get('output_type') == 'stream':
        out.append(o['text'])
      elif kind in o.get('data', {}):
        out.append(o['data'][kind])
  return out


def test_quickstart(tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  nb = execute('quickstart', dict(PRESET='test', STEPS=4, WORKDIR=workdir, DATA_DIR=data_dir,
                                  DECODERS=['ar'], **SMALL))
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '4'))
  text = ''.join(_outputs(nb, 'text/markdown'))
  assert '| ar | autoregressive | yes | 0 |' in text and '| ar | autoregressive | yes | 1 |' in text
  assert len(_outputs(nb, 'image/png')) >= 3  # loss curve, speed-quality, acceptance


def test_decoding_zoo(trained_workdir, tmp_path):
  nb = execute('decoding_zoo', dict(WORKDIR=trained_workdir, PLOT_DIR=str(tmp_path),
                                    **dict(SMALL, DECODERS=['ar'], TEMPERATURES=(0.0,))))
  text = ''.join(_outputs(nb, 'text/markdown')) + ''.join(_outputs(nb, 'text/plain'))
  assert '[autoregressive, lossless]' in text  # registry.describe()
  assert '| ar | autoregressive | yes | 0 |' in text
  assert sorted(os.listdir(tmp_path)) == ['report_acceptance.png', 'report_speed_quality.png']


def test_tpu_colab_on_eight_cpu_devices(tmp_path, data_dir):
  """The TPU notebook's mesh code on 8 virtual devices: data=2, fsdp=2, tensor=2."""
  workdir = str(tmp_path / 'small')
  nb = execute('tpu_colab', dict(PRESET='test', STEPS=2, WORKDIR=workdir, DATA_DIR=data_dir,
                                 MESH=dict(data=2, fsdp=2, tensor=2), MAX_NEW_TOKENS=8,
                                 EXTRA_PIP=[]), devices=8)
  text = ''.join(_outputs(nb, 'text/plain'))
  assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in text
  assert '| ar | autoregressive |' in text
  meta = json.load(open(os.path.join(workdir, 'config.json')))
  assert meta['mesh'] == {'data': 2, 'fsdp': 2, 'tensor': 2}
