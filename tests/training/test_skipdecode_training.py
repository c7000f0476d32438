"""SkipDecode fine-tuning: random profiles never decrease, and a short run from an AR
checkpoint trains, reports the full model's loss and decodes with `skipdecode`."""

import jax
import numpy as np
import pytest

import testlib
from configs import skipdecode as skip_config
from decoding import SamplingConfig
from training.objectives import skipdecode as skip_objective
from workbench import Workbench


def test_random_skips_never_decrease_and_stay_in_range():
  skip = np.asarray(skip_objective.random_skips(jax.random.key(0), 256, 32, 3, 0.25))
  assert skip.shape == (256, 32)
  assert np.all(np.diff(skip, axis=1) >= 0)
  assert skip.min() == 0 and skip.max() == 3
  full = np.all(skip == 0, axis=1).mean()
  assert 0.25 < full < 0.55  # full_fraction plus profiles starting near the end
  assert np.any(skip[:, 0] == 0) and np.any(skip[:, -1] == 3)


def test_bad_settings_give_clear_errors():
  c = skip_config.get_config('test')
  with c.unlocked():
    c.skip.max_skip = 2
  with pytest.raises(ValueError, match=r'skip.max_skip must be in \[1, 1\]'):
    skip_objective.settings(c, 2)
  with c.unlocked():
    c.skip.bogus = 1
  with pytest.raises(ValueError, match='Unknown skip config keys'):
    skip_objective.settings(c, 2)


def test_fine_tune_from_an_ar_run_then_decode(tmp_path, data_dir, trained_workdir):
  c = skip_config.get_config('test')
  c.skip.init_from = trained_workdir
  workdir = str(tmp_path / 'skip')
  rows = testlib.short_fine_tune(c, workdir, data_dir)
  first = [r for r in rows if r['split'] == 'train'][0]
  evals = [r for r in rows if r['split'] == 'eval']
  assert evals and 'full_loss' in evals[-1] and 'mean_skip' in evals[-1]
  # Started from the trained run: the first training loss is far below a fresh model's.
  assert first['loss'] < np.log(c.model.vocab_size or 272) - 1.0
  bench = Workbench.load(workdir)
  _, prompts = bench.heldout_prompts(2, chars=16)
  results = bench.run(bench.decoders(['ar', 'skipdecode:max_skip=1'], SamplingConfig()), prompts,
                      max_new_tokens=6)
  (_, (_, ar)), (_, (_, skip)) = results.items()
  assert skip.extra['layer_forwards'] < ar.target_forwards * 2
