"""The one registry idiom (registry.Registry) and the registries that use it."""

import pytest

import registry
from data.tasks import exact_match, reasoning
from decoding import registry as decoder_registry
from decoding.speculative import decoders as spec_decoders
from training import objectives


def test_registry_adds_lists_and_refuses_duplicates_and_unknown_names():
  reg = registry.Registry('widget', hint='See --list_widgets.')
  f, g = object(), object()
  assert reg.register('b')(f) is f
  reg.add('a', g)
  reg.add('a', g)  # the same factory again is fine (a module imported twice)
  assert reg.names() == ['a', 'b'] and list(reg) == ['a', 'b'] and 'a' in reg
  assert reg.get('b') is f and len(reg) == 2
  with pytest.raises(ValueError, match="Widget 'a' is registered twice"):
    reg.add('a', f)
  with pytest.raises(ValueError, match=r"Unknown widget 'c'; registered widgets: \['a', 'b'\]\. "
                                       'See --list_widgets'):
    reg.get('c')
  reg.remove('a')
  assert reg.names() == ['b']


def test_every_registry_is_a_registry_and_complete_after_one_import():
  """Each package's __init__ imports its rooms, so the registries are full."""
  for reg in (decoder_registry.DECODERS, spec_decoders.DRAFTERS, reasoning.TASKS,
              exact_match.TASKS, objectives.registry.OBJECTIVES):
    assert isinstance(reg, registry.Registry) and len(reg) > 0
  assert {'ar', 'speculative', 'medusa', 'llada', 'coconut'} <= set(decoder_registry.names())
  assert 'model' in spec_decoders.drafter_names()
  assert {'ar', 'masked_diffusion', 'coconut'} <= set(objectives.names())
  assert 'sudoku4' in exact_match.names() and 'prosqa' in reasoning.names()


def test_each_speculative_name_is_its_own_class_with_its_drafters_settings():
  for name in ('speculative', 'spec_dynamic', 'spec_rsd', 'prompt_lookup', 'token_recycling',
               'jacobi', 'lookahead', 'jacobi_forcing', 'medusa', 'mtp', 'layerskip', 'kangaroo', 'del'):
    cls = decoder_registry.get(name)
    assert cls.__name__.endswith('Decoder') and cls.__module__ == spec_decoders.__name__
    assert 'verifier' in {f.name for f in decoder_registry.settings_fields(name)}
  assert 'draft_workdir' not in decoder_registry.default_settings('prompt_lookup')
  assert 'exit_layer' not in decoder_registry.default_settings('del')
  dec = decoder_registry.build('speculative', {'drafter': 'prompt_lookup', 'gamma': 2})
  assert dec.get_drafter().gamma == 2 and dec.get_drafter().ngram == 3
  with pytest.raises(ValueError, match="has no setting 'tree'"):
    decoder_registry.build('speculative', {'drafter': 'layerskip', 'tree': 'static'})
