"""Jacobi Forcing: the trajectory collector (every state is one Jacobi iteration of the one
before, the last is the AR continuation), the packed layout, the objective (finite loss that
falls over a few steps, clear errors), and a train.py run whose result decodes with
`jacobi_forcing` exactly as AR (greedy, ragged batch)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import workbench
from configs import jacobi_forcing as jf_config
from decoding import Models, registry, run_decoder
from models import Transformer, init_params
from testlib import small_config
from training import trainer
from training.objectives import jacobi_forcing as jf_lib
from training.objectives import jacobi_lib, make_objective

V = 48
P, N, M, B = 5, 4, 2, 3


@pytest.fixture(scope='module')
def model_and_params():
  """A random model with spread logits: Jacobi needs several iterations on it."""
  model = Transformer(small_config(vocab_size=V, num_layers=2, init_std=0.3))
  return model, init_params(model, jax.random.key(7))


def test_collector_states_are_jacobi_iterations_ending_at_ar(model_and_params):
  model, params = model_and_params
  layout = jacobi_lib.Layout(prompt=P, block=N, blocks=M)
  prompt = jax.random.randint(jax.random.key(1), (B, P), 1, V)
  ar, _ = run_decoder(registry.build('ar'), Models(model), {'target': params},
                      np.asarray(prompt).tolist(), max_new_tokens=M * N, cache_size=64,
                      eos_id=-1, pad_id=0)
  clean = jnp.asarray([r.tokens for r in ar], jnp.int32).reshape(B, M, N)
  init = jax.random.randint(jax.random.key(2), (B, M, N), 1, V)
  states = np.asarray(jacobi_lib.collect_jit(model, params, layout, prompt, clean, init))
  assert states.shape == (N + 1, B, M, N)
  np.testing.assert_array_equal(states[0], init)
  np.testing.assert_array_equal(states[-1], clean)  # the fixed point is the AR continuation
  # Reference iteration, independent of the packed layout and its mask: for block j, one
  # causal forward over prompt + clean blocks < j + the state of block j.
  forward = jax.jit(lambda t: model.apply({'params': params}, t).logits_BxTxV)
  for k in range(N):
    for j in range(M):
      seq = jnp.concatenate([prompt, clean[:, :j].reshape(B, -1), states[k][:, j]], axis=1)
      logits = forward(seq)[:, P + j * N - 1:P + (j + 1) * N - 1]
      np.testing.assert_array_equal(states[k + 1][:, j], np.argmax(logits, -1),
                                    err_msg=f'iteration {k + 1}, block {j}')
  iters = np.asarray(jacobi_lib.iterations_to_converge(
      jnp.asarray(states).reshape(N + 1, B * M, N), clean.reshape(B * M, N)))
  assert iters.max() > 1, 'the random model should need several iterations'
  # Converged prefixes only grow: after k iterations at least k tokens are fixed.
  first = np.asarray(jacobi_lib.first_divergence(jnp.asarray(states), clean[None]))
  assert (np.diff(first, axis=0) >= 0).all() and (first >= np.arange(N + 1)[:, None, None]).all()


def test_layout_mask_and_pairs():
  layout = jacobi_lib.Layout(prompt=2, block=2, blocks=2)  # [p p | k1 k1 | c1 c1 | k2 k2 | c2 c2]
  assert layout.length == 10
  np.testing.assert_array_equal(layout.positions(), [0, 1, 2, 3, 2, 3, 4, 5, 4, 5])
  noisy, clean = layout.mask('noisy'), layout.mask('clean')
  # Clean blocks: plain causal attention over the prompt and the clean blocks.
  causal_idx = [0, 1, 4, 5, 8, 9]
  sub = clean[np.ix_(causal_idx, causal_idx)]
  np.testing.assert_array_equal(sub, np.tril(np.ones((6, 6), bool)))
  np.testing.assert_array_equal(noisy[np.ix_(causal_idx, causal_idx)], sub)
  # Noisy block 2 reads the prompt, noisy block 1 ('noisy') or clean block 1 ('clean').
  assert noisy[6].tolist() == [1, 1, 1, 1, 0, 0, 1, 0, 0, 0]
  assert clean[7].tolist() == [1, 1, 0, 0, 1, 1, 1, 1, 0, 0]
  src, tgt = jf_lib.ar_pairs(layout)
  assert list(zip(src, tgt)) == [(0, 1), (1, 4), (4, 5), (5, 8), (8, 9)]
  with pytest.raises(ValueError, match='Unknown Jacobi context'):
    layout.mask('diagonal')
  with pytest.raises(ValueError, match='block must be >= 1'):
    jacobi_lib.Layout(prompt=2, block=0, blocks=1)


def test_progressive_pick_takes_the_nearest_noise():
  clean = jnp.zeros((1, 2, 4), jnp.int32)
  # States of noise 1, 0.75, 0.25, 0: first divergence at 0, 1, 3, none.
  states = jnp.asarray([[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]], jnp.int32)
  states = jnp.broadcast_to(states[:, None, None], (4, 1, 2, 4))
  picked, noise = jacobi_lib.progressive_pick(states, clean, 2, jax.random.key(0))
  # window 2: levels (0, 1); the two blocks of the row take one each.
  assert sorted(np.asarray(noise)[0].tolist()) == [0.0, 1.0]
  for j in range(2):
    want = states[0 if noise[0, j] == 1 else 3, 0, j]
    np.testing.assert_array_equal(picked[0, j], want)


def _test_config(base):
  cfg = jf_config.get_config('test')
  cfg.jf.base_workdir = base
  return cfg


def test_objective_loss_is_finite_and_falls(trained_workdir):
  cfg = _test_config(trained_workdir)
  model = Transformer(trainer.model_config(cfg, 272))
  objective = make_objective('jacobi_forcing', model, cfg)
  params = {'model': objective.init_model_params()}
  tokens = jax.random.randint(jax.random.key(0), (4, 33), 40, 120)
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt):
    (loss, metrics), grads = jax.value_and_grad(objective.loss_fn, has_aux=True)(
        params, {'tokens': tokens}, jax.random.key(1))
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss, metrics

  losses = []
  for _ in range(8):
    params, opt, loss, metrics = step(params, opt)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses)), losses
  assert losses[-1] < losses[0], losses
  for key in ('ar_loss', 'consistency', 'noisy_top1', 'iters_per_block', 'noise'):
    assert np.isfinite(float(metrics[key])), key
  assert 1 <= float(metrics['iters_per_block']) <= 4  # a block of 4 converges in <= 4


def test_trajectories_from_the_frozen_base(trained_workdir):
  """jf.trajectories='base': the base is a frozen extra and the trajectories (hence
  iters_per_block) come from it, whatever the trained model's weights are."""
  cfg = _test_config(trained_workdir)
  cfg.jf.trajectories = 'base'
  model = Transformer(trainer.model_config(cfg, 272))
  objective = make_objective('jacobi_forcing', model, cfg)
  assert objective.frozen == (jf_lib.BASE,)
  base = objective.extras(jax.random.key(0))[jf_lib.BASE]
  tokens = jax.random.randint(jax.random.key(0), (4, 33), 40, 120)
  loss_fn = jax.jit(objective.loss_fn)
  other = init_params(model, jax.random.key(5))
  _, m_base = loss_fn({'model': base, jf_lib.BASE: base}, {'tokens': tokens}, jax.random.key(1))
  loss, m_other = loss_fn({'model': other, jf_lib.BASE: base}, {'tokens': tokens},
                          jax.random.key(1))
  assert np.isfinite(float(loss))
  assert float(m_other['iters_per_block']) == float(m_base['iters_per_block'])
  assert float(m_other['ar_loss']) != float(m_base['ar_loss'])


def test_bad_settings_give_clear_errors(trained_workdir):
  model = Transformer(small_config(vocab_size=272))
  with pytest.raises(ValueError, match='`jf` config section'):
    make_objective('jacobi_forcing', model, None)
  for key, value, match in (('context', 'diagonal', 'jf.context'),
                            ('consistency', 'l2', 'jf.consistency'),
                            ('trajectories', 'teacher', 'jf.trajectories'),
                            ('block', 0, 'jf.block must be'),
                            ('ar_weight', -1.0, 'jf.ar_weight'),
                            ('prompt_len', 99, 'longer than a data row')):
    cfg = _test_config(trained_workdir)
    cfg.jf[key] = value
    with pytest.raises(ValueError, match=match):
      make_objective('jacobi_forcing', model, cfg)
  cfg = _test_config('')
  with pytest.raises(ValueError, match='base_workdir'):
    make_objective('jacobi_forcing', model, cfg).init_model_params()


@pytest.fixture(scope='module')
def forced_run(tmp_path_factory, data_dir, trained_workdir):
  """A short train.py run of the `,test` preset from the base."""
  cfg = _test_config(trained_workdir)
  cfg.data.data_dir = data_dir
  cfg.train.update(steps=3, eval_every=3, checkpoint_every=3, async_checkpointing=False)
  workdir = str(tmp_path_factory.mktemp('jf'))
  return workdir, trainer.train_and_evaluate(cfg, workdir)


def test_train_py_run_decodes_exactly_as_ar(forced_run, trained_workdir):
  """`jacobi_forcing` (with and without recycling) and `jacobi` give AR's greedy tokens on a
  ragged batch for the base and the forced run."""
  workdir, metrics = forced_run
  assert np.isfinite(metrics['train']['loss']) and 'bits_per_byte' in metrics['eval']
  for run in (trained_workdir, workdir):
    bench = workbench.Workbench.load(run)
    tok = bench.tokenizer
    prompts = [tok.encode(t, add_bos=True) for t in ('def f(x):\n', 'import o', 'class A')]
    decoders = [('ar', registry.build('ar')), ('jacobi', registry.build('jacobi', {'window': 6})),
                ('jf', registry.build('jacobi_forcing', {'block': 4, 'blocks': 2})),
                ('jf1', registry.build('jacobi_forcing', {'block': 3, 'blocks': 1,
                                                          'recycle': 0}))]
    results = bench.run(decoders, prompts, max_new_tokens=20)
    ref = [r.tokens for r in results['ar'][0]]
    assert len({len(p) for p in prompts}) == 3
    assert set(results) == {'ar', 'jacobi', 'jf', 'jf1'}
    for name, (rows, _) in results.items():
      assert [r.tokens for r in rows] == ref, (run, name)


def test_benchmark_writes_its_table(forced_run, trained_workdir, tmp_path, monkeypatch):
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  from benchmarks import jacobi_forcing as bench_jf  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  bench_jf.main([f'--base={trained_workdir}', f'--forced={forced_run[0]}', '--prompts=2',
                 '--prompt_chars=20', '--max_new_tokens=12', '--block=4', '--repeats=1',
                 '--eval_batches=1', '--tag=test'])
  text = (tmp_path / 'jacobi_forcing_test.md').read_text()
  assert '- commit: ' in text and 'jacobi_forcing 2x4 + recycle 2' in text
  result = json.loads((tmp_path / 'jacobi_forcing_test.json').read_text())
  assert common.distinct_ngrams([[1, 2, 3, 4, 1, 2, 3, 4, 1]]) == 4 / 6
  for run in result['runs'].values():
    assert 0 < run['distinct_4grams'] <= 1
    assert all(r['equals_ar'] for r in run['rows'].values())
    assert all(0 < r['iters_per_token'] <= 1 for r in run['rows'].values())
