"""The model kind: written into every checkpoint, derived for older ones, checked by decoders
with one clear error."""

import os
import shutil
import types

import numpy as np
import pytest

import decoding
from configs import diffusion_lm, diffusion_tasks, lm
from decoding import registry
from models import Transformer
from models import chimera as chimera_lib
from models import eagle as eagle_lib
from models import heads as heads_lib
from models import hamburger as hamburger_lib
from models import kv_predict as kv_predict_lib
from models import ppd as ppd_lib
from models import unmask_policy as unmask_policy_lib
from models import mask_mtp as mask_mtp_lib
from models import attribute as attribute_lib
from models import bitlm as bitlm_lib
from models import pipo as pipo_lib
from models import block_size as block_size_lib
from models import kind as kind_lib
from models.kind import ModelKind
from testlib import small_config
from training import objectives
from workdir import checkpoint, loading
from workdir import kind as workdir_kind

AR = ModelKind()
MDLM = ModelKind(attention='bidirectional', mask_id=259, shift=True)
BD3 = ModelKind(attention='block_causal', mask_id=259, block_size=8)
WEDLM = ModelKind(attention='causal', mask_id=259, shift=True, block_size=16)
ASARM = ModelKind(attention='bidirectional', mask_id=259, any_order=True)


def test_kind_round_trips_through_a_dict_and_describes_itself_in_one_line():
  for kind in (AR, MDLM, BD3, WEDLM, ASARM, ModelKind(heads=('mtp', 'medusa'))):
    assert ModelKind.from_dict(kind.to_dict()) == kind
    assert '\n' not in kind.describe()
  assert ModelKind(heads=('mtp', 'medusa')).heads == ('medusa', 'mtp')
  with pytest.raises(ValueError, match='attention'):
    ModelKind(attention='sideways')
  with pytest.raises(ValueError, match='Unknown ModelKind fields'):
    ModelKind.from_dict({'attention': 'causal', 'colour': 'red'})


def test_families():
  assert kind_lib.families(AR) == {'autoregressive'}
  assert kind_lib.families(MDLM) == kind_lib.families(BD3) == {'diffusion'}
  assert kind_lib.families(WEDLM) == {'autoregressive', 'diffusion'}  # causal, fills masks
  assert kind_lib.families(ASARM) == {'any_order'}
  assert kind_lib.families(ModelKind(heads=('bitlm',))) == {'bitlm'}  # not an AR model


def _build(name, **settings):
  return registry.build(name, settings, decoding.SamplingConfig())


@pytest.mark.parametrize('name, kind, expected, found', [
    ('llada', AR, 'a diffusion model', 'causal'),              # diffusion decoder, AR model
    ('fast_dllm', ASARM, 'a diffusion model', 'any-order'),
    ('ar', MDLM, 'an autoregressive (causal) model', 'bidirectional'),  # AR-only decoder
    ('ar', BD3, 'an autoregressive (causal) model', 'block_causal'),
    ('assd', AR, 'an any-subset AR model', 'causal'),
])
def test_a_decoder_refuses_a_kind_it_cannot_read_with_one_line(name, kind, expected, found):
  with pytest.raises(ValueError) as e:
    _build(name).for_model({'target': kind})
  msg = str(e.value)
  assert '\n' not in msg
  assert f'Decoder {name!r} needs {expected}' in msg and found in msg, msg


def test_diffuspec_checks_target_and_drafter():
  dec = _build('diffuspec', drafter='unused')
  with pytest.raises(ValueError, match=r"'diffuspec' \(target\) needs an autoregressive"):
    dec.for_model({'target': MDLM, 'drafter': MDLM})
  with pytest.raises(ValueError, match=r"'diffuspec' \(drafter\) needs a diffusion model"):
    dec.for_model({'target': AR, 'drafter': AR})
  got = dec.for_model({'target': AR, 'drafter': MDLM})
  assert (got.mask_id, got.shift, got.block_causal) == (259, 1, 0)



@pytest.mark.parametrize('name, settings, head', [
    ('medusa', {}, 'medusa'),
    ('mtp', {}, 'mtp'),
    ('kangaroo', {}, 'kangaroo'),
    ('speculative', {'drafter': 'medusa'}, 'medusa'),  # routed to the Medusa drafter
    ('chimera', {}, 'chimera'),
])
def test_a_heads_decoder_refuses_a_run_without_its_heads_with_one_line(name, settings, head):
  dec = _build(name, **settings)
  # Every other head but BitLM's (a run with it is a BitLM model, not an AR model: see
  # test_families).
  for kind in (AR, ModelKind(heads=tuple(h for h in kind_lib.HEADS if h not in (head, 'bitlm')))):
    with pytest.raises(ValueError) as e:
      dec.for_model({'target': kind})
    msg = str(e.value)
    assert '\n' not in msg
    assert f'Decoder {name!r} needs {head} heads in the target run' in msg, msg
    assert f'`python train.py --config=configs/spec_heads.py:{head} --workdir=RUN`' in msg, msg
  assert dec.for_model({'target': ModelKind(heads=(head,))}) == dec


def test_heads_known_to_the_kind_are_the_models_heads():
  assert set(kind_lib.HEADS) == {heads_lib.MEDUSA, heads_lib.MTP, heads_lib.KANGAROO,
                                 *eagle_lib.VARIANTS, unmask_policy_lib.HEAD,
                                 kv_predict_lib.KV_PREDICT, chimera_lib.CHIMERA, ppd_lib.PPD,
                                 mask_mtp_lib.MASK_MTP, block_size_lib.HEAD,
                                 attribute_lib.HEAD, hamburger_lib.HAMBURGER,
                                 bitlm_lib.BITLM, pipo_lib.PIPO}
  assert _build('speculative').for_model({'target': AR}) == _build('speculative')
  with pytest.raises(ValueError, match='unknown heads'):
    kind_lib.require_heads(AR, ('eagle',), 'x')

def test_decoders_accept_their_kinds_and_take_settings_from_them():
  assert _build('ar').for_model({'target': WEDLM}) == _build('ar')
  got = _build('llada').for_model({'target': BD3})
  assert (got.mask_id, got.shift, got.block_causal, got.block_size) == (259, 0, 1, 8)
  got = _build('wedlm').for_model({'target': WEDLM})
  assert (got.mask_id, got.shift, got.block_causal) == (259, 1, 0)
  got = _build('assd').for_model({'target': ASARM})
  assert (got.mask_id, got.shift, got.block_causal) == (259, 0, 0)


@pytest.mark.parametrize('make_config', [
    lambda: lm.get_config('test'),
    lambda: diffusion_lm.get_config('mdlm,test'),
    lambda: diffusion_lm.get_config('dream,test'),
    lambda: diffusion_lm.get_config('bd3,test'),
    lambda: diffusion_lm.get_config('wedlm,test'),
    lambda: diffusion_tasks.get_config('sudoku4,asarm'),
], ids=['ar', 'mdlm', 'dream', 'bd3', 'wedlm', 'asarm'])
def test_the_kind_derived_for_old_checkpoints_is_what_the_objective_writes(make_config):
  config = make_config()
  objective = objectives.make_objective(config.objective, Transformer(small_config()), config)
  derived = workdir_kind.from_config(config.to_dict(), tokenizer_mask_id=259)
  assert derived == objective.kind


def _workdir_with(tmp_path, trained_workdir, meta_kind, config_update):
  """A copy of the trained run's config, tokenizer and step-20 params, re-saved with
  `meta_kind` (None: a checkpoint from before kinds were recorded) and `config_update`."""
  out = str(tmp_path / 'run')
  loaded = loading.load_model(trained_workdir)
  shutil.copytree(os.path.join(trained_workdir, checkpoint.TOKENIZER_DIR),
                  os.path.join(out, checkpoint.TOKENIZER_DIR))
  config = dict(checkpoint.read_config(trained_workdir), **config_update)
  checkpoint.write_config(out, config)
  meta = {'model': loaded.model_config.to_dict(), 'objective': config['objective'],
          'extras': [], 'config': config}
  if meta_kind is not None:
    meta['kind'] = meta_kind.to_dict()
  ckpt = checkpoint.Checkpointer(out, async_save=False)
  state = types.SimpleNamespace(params={'model': loaded.params},
                                opt_state={'none': np.zeros((), np.int32)})
  ckpt.save(3, state, {}, meta, force=True)
  ckpt.close()
  return out


def test_training_writes_the_kind_and_loading_reads_it(trained_workdir):
  ckpt = checkpoint.Checkpointer(trained_workdir, read_only=True, async_save=False)
  meta = ckpt.read_meta(ckpt.latest_step())
  ckpt.close()
  assert meta['kind'] == AR.to_dict()  # the `ar` objective: causal, no heads
  assert loading.load_model(trained_workdir).kind == AR
  assert workdir_kind.read(trained_workdir) == AR


def test_a_kind_round_trips_through_save_and_restore(tmp_path, trained_workdir):
  kind = ModelKind(attention='block_causal', mask_id=7, shift=True, block_size=4,
                   heads=('mtp',))
  out = _workdir_with(tmp_path, trained_workdir, kind, {})
  assert loading.load_model(out).kind == kind
  assert workdir_kind.read(out) == kind
  assert workdir_kind.for_decoder(AR, {'drafter': out, 'missing': str(tmp_path / 'no')}) == {
      'target': AR, 'drafter': kind}


def test_a_checkpoint_without_a_kind_gets_it_from_its_config(tmp_path, trained_workdir):
  out = _workdir_with(tmp_path, trained_workdir, None, {
      'objective': 'block_diffusion', 'diffusion': {'shift': False, 'block_size': 4,
                                                    'mask_id': -1}})
  loaded = loading.load_model(out)
  expected = ModelKind(attention='block_causal', mask_id=loaded.tokenizer.mask_id,
                       block_size=4)
  assert loaded.kind == expected
  assert workdir_kind.read(out) == expected
  dec = registry.build('llada', {}).for_model({'target': loaded.kind})
  assert (dec.block_causal, dec.block_size) == (1, 4)


def test_require_same_model_names_the_setting_and_every_differing_field():
  loaded = types.SimpleNamespace(model=Transformer(small_config(num_layers=2, d_model=32)))
  loading.require_same_model(small_config(num_layers=2, d_model=32), loaded, 'x.init_from=D')
  with pytest.raises(ValueError, match=r"x.init_from=D holds a different model: d_model=32 "
                     r"\(config: 64\), .*num_layers=2 \(config: 3\)\. Use the target's"):
    loading.require_same_model(small_config(num_layers=3, d_model=64), loaded, 'x.init_from=D',
                               "Use the target's.")
  with pytest.raises(ValueError, match=r'holds a different model: mlp_dim=64 \(config: 96\)$'):
    loading.require_same_model(small_config(mlp_dim=96), loaded, 'x')
