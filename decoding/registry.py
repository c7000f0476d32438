"""The decoder registry: `@register` a Decoder subclass; build one by name from settings.

  sample.py --decoder=NAME --decoder_config.FIELD=VALUE

`DECODERS` is a `registry.Registry` (the project's one registry idiom); the modules that
register decoders are imported in `decoding/__init__.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

import ml_collections

import registry as registry_lib
from decoding import base
from decoding import sampling as sampling_lib

DECODERS: registry_lib.Registry[type[base.Decoder]] = registry_lib.Registry(
    'decoder', hint='See `python sample.py --list_decoders`.')
D = TypeVar('D', bound=type)


def register(cls: D) -> D:
  """Class decorator: registers a Decoder subclass under its `name`."""
  if not cls.name:
    raise ValueError(f'{cls.__name__} needs a non-empty class attribute `name`.')
  return DECODERS.add(cls.name, cls)


def names() -> list[str]:
  return DECODERS.names()


def get(name: str) -> type[base.Decoder]:
  return DECODERS.get(name)


def settings_fields(name: str) -> list[dataclasses.Field]:
  return [f for f in dataclasses.fields(get(name)) if f.name != 'sampling']


def default_settings(name: str) -> ml_collections.ConfigDict:
  """A locked ConfigDict of the decoder's settings (its dataclass fields but `sampling`)."""
  values = {}
  for f in settings_fields(name):
    if f.default is not dataclasses.MISSING:
      values[f.name] = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
      values[f.name] = f.default_factory()  # type: ignore[misc]
    else:
      values[f.name] = None
  c = ml_collections.ConfigDict(values)
  c.lock()
  return c


def build(name: str, settings: Mapping[str, Any] | None = None,
          sampling: sampling_lib.SamplingConfig | None = None) -> base.Decoder:
  """Instantiates decoder `name` with `settings` (unknown keys are an error)."""
  cls = get(name)
  settings = dict(settings or {})
  known = {f.name for f in settings_fields(name)}
  unknown = sorted(set(settings) - known)
  if unknown:
    raise ValueError(f'Unknown settings {unknown} for decoder {name!r}; known: {sorted(known)}.')
  for f in settings_fields(name):
    if isinstance(settings.get(f.name), list):
      settings[f.name] = tuple(settings[f.name])
  return cls(sampling=sampling or sampling_lib.SamplingConfig(), **settings)


def _convert(name: str, field: dataclasses.Field, text: str) -> Any:
  """A setting's value from its text, by the type of the field's default."""
  default = field.default if field.default is not dataclasses.MISSING else None
  try:
    if isinstance(default, bool):
      if text.lower() not in ('true', 'false', '1', '0'):
        raise ValueError(text)
      return text.lower() in ('true', '1')
    if isinstance(default, int):
      return int(text)
    if isinstance(default, float):
      return float(text)
  except ValueError:
    raise ValueError(f'Decoder {name!r}: setting {field.name}={text!r} is not a '
                     f'{type(default).__name__}.') from None
  return text.replace('/', ',')  # strings: '/' stands for the ',' that separates decoders


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
  """'NAME' or 'NAME:key=value:key=value' -> (name, settings), values typed by the fields.

  In a string setting '/' stands for ',' (commas separate decoders on the command line):
  'speculative:tree=static:branching=4/2/2/1'.
  """
  name, *parts = spec.strip().split(':')
  fields = {f.name: f for f in settings_fields(name)}
  settings = {}
  for part in parts:
    key, eq, text = part.partition('=')
    if not eq or not key:
      raise ValueError(f'Decoder spec {spec!r}: expected NAME:key=value[:key=value...], got '
                       f'{part!r}.')
    if key not in fields:
      raise ValueError(f'Unknown setting {key!r} for decoder {name!r} in {spec!r}; known: '
                       f'{sorted(fields)}.')
    settings[key] = _convert(name, fields[key], text)
  return name, settings


def spec_label(name: str, settings: Mapping[str, Any]) -> str:
  """'prompt_lookup(gamma=2)': a decoder with the settings it was given."""
  if not settings:
    return name
  return name + '(' + ', '.join(f'{k}={v}' for k, v in settings.items()) + ')'


def describe() -> str:
  """One line per decoder: name, family, lossless or not, and its settings."""
  lines = []
  for name in names():
    cls = DECODERS.get(name)
    doc = ' '.join((cls.__doc__ or '').strip().split('\n\n')[0].split())  # first paragraph
    fields = ', '.join(f'{f.name}={f.default!r}' for f in settings_fields(name)
                       if f.default is not dataclasses.MISSING)
    kind = 'lossless' if cls.lossless else 'lossy'
    lines.append(f'{name:24s} [{cls.family}, {kind}] {doc}' + (f'\n{"":26s}settings: {fields}'
                                                               if fields else ''))
  return '\n'.join(lines)
