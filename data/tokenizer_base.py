"""Tokenizer interface, the 16 special tokens, and the byte tokenizer.

See `data.tokenizers` (the public module) for the contracts every tokenizer
keeps; this module holds what the other tokenizer modules build on.
"""

from __future__ import annotations

import abc
import json
import os
import re
from typing import Any

import numpy as np

SPECIAL_TOKENS: tuple[str, ...] = (
    '<pad>', '<bos>', '<eos>', '<mask>', '<sep>', '<think>', '</think>',
    '<latent>', '<pause>') + tuple(f'<extra_{i}>' for i in range(7))
assert len(SPECIAL_TOKENS) == 16

CONFIG_FILE = 'tokenizer_config.json'
TOKENIZER_FILE = 'tokenizer.json'
FORMAT_VERSION = 1
_SURROGATE = re.compile('[\ud800-\udfff]')


def as_id_list(ids: Any) -> list[int]:
  """Flattens a list / tuple / np array of ids into a list of Python ints."""
  return np.asarray(ids, dtype=np.int64).reshape(-1).tolist()


def scrub_surrogates(text: str) -> str:
  """Replaces each lone surrogate (unencodable in UTF-8) with one U+FFFD."""
  return _SURROGATE.sub('\ufffd', text)


class Tokenizer(abc.ABC):
  """Maps str <-> list of int ids; see `data.tokenizers` for the contracts.

  Subclasses set ``self._specials`` (special name -> id) in ``__init__``.
  """

  _specials: dict[str, int]

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids, specials included (ids are in ``[0, vocab_size)``)."""

  @property
  def special_ids(self) -> dict[str, int]:
    """Every name of `SPECIAL_TOKENS` -> its id (a copy)."""
    return dict(self._specials)

  @abc.abstractmethod
  def _encode(self, text: str) -> list[int]:
    """Encodes text without specials."""

  @abc.abstractmethod
  def decode(self, ids: Any, skip_special: bool = True) -> str:
    """Ids (list or int array of any shape, flattened) -> str; never raises."""

  @abc.abstractmethod
  def token_byte_lengths(self) -> np.ndarray:
    """int32 [V]: UTF-8 bytes each token decodes to (0 for specials)."""

  @abc.abstractmethod
  def save(self, directory: str) -> None:
    """Writes the files `load_tokenizer(directory)` reads back."""

  def special_id(self, name: str) -> int:
    """Id of a special token by name, e.g. ``special_id('<think>')``."""
    try:
      return self._specials[name]
    except KeyError:
      raise KeyError(f'Unknown special token {name!r}; this tokenizer has '
                     f'{list(self._specials)}.') from None

  @property
  def pad_id(self) -> int:
    return self.special_id('<pad>')

  @property
  def bos_id(self) -> int:
    return self.special_id('<bos>')

  @property
  def eos_id(self) -> int:
    return self.special_id('<eos>')

  @property
  def mask_id(self) -> int:
    return self.special_id('<mask>')

  def encode(self, text: str, add_bos: bool = False,
             add_eos: bool = False) -> list[int]:
    """str -> ids ``[T]``; optionally framed by ``<bos>`` / ``<eos>``."""
    ids = self._encode(text)
    if add_bos:
      ids = [self.bos_id] + ids
    if add_eos:
      ids = ids + [self.eos_id]
    return ids

  @property
  def prompt_prefix(self) -> list[int]:
    """The ids a prompt starts with by the convention of the model's training: ``[<bos>]``
    for what this codebase trains (documents start with ``<bos>``); for an imported Hugging
    Face checkpoint, what its tokenizer puts first (`HFTokenizer`)."""
    return [self.bos_id]

  def encode_prompt(self, text: str, add_bos: bool | None = None) -> list[int]:
    """A prompt's ids: `prompt_prefix` + encode(text) (``add_bos=None``), or with
    ``add_bos=True`` / ``False`` a leading ``<bos>`` forced (the prefix, if it has one) or
    left out."""
    ids = self._encode(text)
    if add_bos is None:
      return list(self.prompt_prefix) + ids
    if add_bos:
      return (list(self.prompt_prefix) or [self.bos_id]) + ids
    return ids

  def _write_config(self, directory: str, kind: str,
                    base: dict[str, Any] | None = None,
                    **ours: Any) -> None:
    """Writes tokenizer_config.json: ``base`` keys + ours under 'leapfrog'."""
    os.makedirs(directory, exist_ok=True)
    config = dict(base or {})
    config['leapfrog'] = {'kind': kind, 'format_version': FORMAT_VERSION,
                          'vocab_size': self.vocab_size, **ours}
    with open(os.path.join(directory, CONFIG_FILE), 'w') as f:
      json.dump(config, f, indent=2, ensure_ascii=False)


class ByteTokenizer(Tokenizer):
  """Ids 0..255 are the UTF-8 bytes; 256..271 are `SPECIAL_TOKENS` in order."""

  def __init__(self) -> None:
    self._specials = {name: 256 + i for i, name in enumerate(SPECIAL_TOKENS)}
    self._names = {i: name for name, i in self._specials.items()}

  @property
  def vocab_size(self) -> int:
    return 256 + len(SPECIAL_TOKENS)

  def _encode(self, text: str) -> list[int]:
    try:
      data = text.encode('utf-8')
    except UnicodeEncodeError:
      data = scrub_surrogates(text).encode('utf-8')
    return list(data)

  def decode(self, ids: Any, skip_special: bool = True) -> str:
    if skip_special:
      flat = np.asarray(ids, dtype=np.int64).reshape(-1)
      data = flat[(flat >= 0) & (flat < 256)].astype(np.uint8).tobytes()
      return data.decode('utf-8', 'replace')
    pieces: list[str] = []
    run = bytearray()
    for i in as_id_list(ids):
      if 0 <= i < 256:
        run.append(i)
        continue
      pieces.append(run.decode('utf-8', 'replace'))
      run = bytearray()
      pieces.append(self._names.get(i, '\ufffd'))
    pieces.append(run.decode('utf-8', 'replace'))
    return ''.join(pieces)

  def token_byte_lengths(self) -> np.ndarray:
    lengths = np.zeros([self.vocab_size], np.int32)
    lengths[:256] = 1
    return lengths

  def save(self, directory: str) -> None:
    self._write_config(directory, 'byte')


def read_json(path: str) -> dict[str, Any]:
  """The JSON object in ``path``, or {} if there is no such file."""
  if not os.path.isfile(path):
    return {}
  with open(path, encoding='utf-8') as f:
    return json.load(f)
