"""Tokenizers backed by the `tokenizers` library: trained byte-level BPE and
Hugging Face ``tokenizer.json`` files. Public names are re-exported by
`data.tokenizers`, whose docstring states the contracts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import tokenizers as hf_tokenizers

from data.tokenizer_base import (CONFIG_FILE, SPECIAL_TOKENS, TOKENIZER_FILE,
                                 Tokenizer, as_id_list, read_json,
                                 scrub_surrogates)

# Our special name -> the Hugging Face tokenizer_config.json key naming it.
_HF_ROLE_KEYS = {'<pad>': 'pad_token', '<bos>': 'bos_token',
                 '<eos>': 'eos_token', '<mask>': 'mask_token',
                 '<sep>': 'sep_token'}


class _WrappedTokenizer(Tokenizer):
  """Shared code for tokenizers backed by a `tokenizers.Tokenizer`.

  Args:
    hf: the backing tokenizer; every id of ``specials`` must exist in it.
    specials: `SPECIAL_TOKENS` name -> token string in ``hf`` (e.g. for a
      Llama tokenizer ``{'<eos>': '</s>', ...}``).
  """

  def __init__(self, hf: hf_tokenizers.Tokenizer,
               specials: dict[str, str]) -> None:
    self._hf = hf
    # Literal '<eos>' in text is encoded as ordinary text, never as a special.
    self._hf.encode_special_tokens = True
    self._special_tokens = dict(specials)
    self._specials = {}
    for name, content in specials.items():
      token_id = hf.token_to_id(content)
      if token_id is None:
        raise ValueError(f'Special {name!r} maps to {content!r}, which is not '
                         'in the tokenizer vocabulary.')
      self._specials[name] = token_id
    self._special_set = frozenset(self._specials.values())
    self._vocab_size = max(hf.get_vocab_size(with_added_tokens=True),
                           max(self._special_set, default=-1) + 1)
    self._byte_lengths: np.ndarray | None = None

  @property
  def hf_tokenizer(self) -> hf_tokenizers.Tokenizer:
    """The backing `tokenizers.Tokenizer` (do not mutate)."""
    return self._hf

  @property
  def vocab_size(self) -> int:
    return self._vocab_size

  def _encode(self, text: str) -> list[int]:
    try:
      return self._hf.encode(text, add_special_tokens=False).ids
    except (UnicodeEncodeError, TypeError):  # lone surrogates in `text`
      return self._hf.encode(scrub_surrogates(text),
                             add_special_tokens=False).ids

  def decode(self, ids: Any, skip_special: bool = True) -> str:
    ids = as_id_list(ids)
    if skip_special:
      kept = [i for i in ids
              if 0 <= i < self._vocab_size and i not in self._special_set]
      return self._hf.decode(kept, skip_special_tokens=True)
    # Decode runs of in-range ids; out-of-range ids become U+FFFD.
    pieces: list[str] = []
    run: list[int] = []
    for i in ids:
      if 0 <= i < self._vocab_size:
        run.append(i)
      else:
        pieces.append(self._hf.decode(run, skip_special_tokens=False))
        pieces.append('\ufffd')
        run = []
    pieces.append(self._hf.decode(run, skip_special_tokens=False))
    return ''.join(pieces)

  def token_byte_lengths(self) -> np.ndarray:
    if self._byte_lengths is None:
      lengths = _byte_lengths(self._hf, self._vocab_size)
      lengths[list(self._special_set)] = 0
      self._byte_lengths = lengths
    return self._byte_lengths.copy()

  def _save(self, directory: str, kind: str, base: dict[str, Any],
            **ours: Any) -> None:
    os.makedirs(directory, exist_ok=True)
    self._hf.save(os.path.join(directory, TOKENIZER_FILE))
    config = dict(base)
    config.setdefault('tokenizer_class', 'PreTrainedTokenizerFast')
    for name, key in _HF_ROLE_KEYS.items():
      if name in self._special_tokens:
        config[key] = self._special_tokens[name]
    self._write_config(directory, kind, config, specials=self._special_tokens,
                       **ours)


def _is_byte_level(hf: hf_tokenizers.Tokenizer) -> bool:
  """Whether tokens are spelled in the GPT-2 byte alphabet (1 char = 1 byte)."""
  spec = json.loads(hf.to_str())
  return 'ByteLevel' in json.dumps([spec.get('pre_tokenizer'),
                                    spec.get('decoder')])


def _byte_lengths(hf: hf_tokenizers.Tokenizer, vocab_size: int) -> np.ndarray:
  """int32 [V] UTF-8 byte length of each id (0 for special / missing ids).

  Exact for byte-level BPE (each char of a token spells one byte) and for
  SentencePiece-style vocabularies (``<0xNN>`` byte-fallback tokens are 1 byte,
  ``'▁'`` is a space); other vocabularies count the UTF-8 of the token
  string with WordPiece's ``##`` removed, an approximation. Added (non-special)
  tokens count the UTF-8 of their content.
  """
  byte_level = _is_byte_level(hf)
  added = hf.get_added_tokens_decoder()
  lengths = np.zeros([vocab_size], np.int32)
  for i in range(vocab_size):
    token = hf.id_to_token(i)
    if i in added:
      lengths[i] = 0 if added[i].special else len(added[i].content.encode())
    elif token is None:
      continue
    elif byte_level:
      lengths[i] = len(token)
    elif len(token) == 6 and token.startswith('<0x') and token.endswith('>'):
      lengths[i] = 1
    else:
      token = token[2:] if token.startswith('##') else token
      lengths[i] = len(token.replace('\u2581', ' ').encode('utf-8'))
  return lengths


class BPETokenizer(_WrappedTokenizer):
  """Byte-level BPE (see `train_bpe`); specials are tokens named as in
  `SPECIAL_TOKENS`. Round trip ``decode(encode(s)) == s`` holds for every str.
  """

  def __init__(self, hf: hf_tokenizers.Tokenizer) -> None:
    super().__init__(hf, {name: name for name in SPECIAL_TOKENS})

  def save(self, directory: str) -> None:
    self._save(directory, 'bpe', {})


def train_bpe(texts: Iterable[str], vocab_size: int, *,
              min_frequency: int = 2) -> BPETokenizer:
  """Trains a byte-level BPE tokenizer offline with the `tokenizers` library.

  Ids 0..15 are `SPECIAL_TOKENS`, then the 256 byte symbols, then merges. The
  GPT-2 ByteLevel pre-tokenizer (no prefix space) and decoder make
  ``decode(encode(s)) == s`` exact. All 256 bytes are in the alphabet, so text
  unlike the training data still encodes.

  Args:
    texts: training documents (iterated once).
    vocab_size: target vocabulary size including the 16 specials; at least
      272. The result is smaller when there are too few pairs to merge.
    min_frequency: a pair is merged only if seen at least this often.
  """
  minimum = 256 + len(SPECIAL_TOKENS)
  if vocab_size < minimum:
    raise ValueError(f'BPE vocab_size must be >= {minimum} (256 bytes + '
                     f'{len(SPECIAL_TOKENS)} specials); got {vocab_size}.')
  hf = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE())
  hf.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(
      add_prefix_space=False)
  hf.decoder = hf_tokenizers.decoders.ByteLevel()
  trainer = hf_tokenizers.trainers.BpeTrainer(
      vocab_size=vocab_size, min_frequency=min_frequency,
      special_tokens=list(SPECIAL_TOKENS), show_progress=False,
      initial_alphabet=hf_tokenizers.pre_tokenizers.ByteLevel.alphabet())
  hf.train_from_iterator(texts, trainer)
  return BPETokenizer(hf)


class HFTokenizer(_WrappedTokenizer):
  """A Hugging Face ``tokenizer.json``, with our specials mapped or added.

  Each name of `SPECIAL_TOKENS` gets, in order of preference: the token named
  for its role in ``tokenizer_config.json`` / ``special_tokens_map.json``
  (``pad_token`` for ``<pad>``, likewise bos, eos, mask, sep), else the token
  spelled like the name if the vocabulary has it, else a new special token
  appended at the end of the vocabulary (so `vocab_size` may exceed the
  pretrained embedding table; models that pad their table absorb this, others
  must resize). With ``add_missing_specials=False`` nothing is added: a missing
  ``<pad>`` falls back to ``<eos>``, and asking for any other missing special
  raises KeyError.

  Prompts (`prompt_prefix`) start with ``<bos>`` like the documents this
  codebase trains on, unless the tokenizer was saved with
  ``prompt_convention='checkpoint'`` (what `workdir.hf_import` does): then they
  start with what the checkpoint's own post-processor puts before a text, as
  transformers' ``tokenizer(text)`` does (Llama: ``<s>``; Qwen: nothing).

  Args:
    path: a directory holding ``tokenizer.json`` (and maybe
      ``tokenizer_config.json``), or the path of a ``tokenizer.json`` file.
    prompt_convention: 'bos' or 'checkpoint'; default: as saved, else 'bos'.
  """

  def __init__(self, path: str, *, add_missing_specials: bool = True,
               prompt_convention: str | None = None) -> None:
    directory, file = ((path, os.path.join(path, TOKENIZER_FILE))
                       if os.path.isdir(path) else (os.path.dirname(path), path))
    if not os.path.isfile(file):
      raise FileNotFoundError(f'No Hugging Face tokenizer.json at {path!r}.')
    hf = hf_tokenizers.Tokenizer.from_file(file)
    self._hf_config = read_json(os.path.join(directory, CONFIG_FILE))
    roles = read_json(os.path.join(directory, 'special_tokens_map.json'))
    roles.update(self._hf_config)
    saved = self._hf_config.get('leapfrog', {}).get('specials', {})
    specials: dict[str, str] = {}
    missing = []
    for name in SPECIAL_TOKENS:
      content = saved.get(name) or _token_content(roles.get(_HF_ROLE_KEYS.get(
          name, '')))
      if content is None or hf.token_to_id(content) is None:
        content = name if hf.token_to_id(name) is not None else None
      if content is None:
        missing.append(name)
      else:
        specials[name] = content
    if missing and add_missing_specials:
      hf.add_special_tokens([hf_tokenizers.AddedToken(
          n, special=True, normalized=False) for n in missing])
      specials.update({n: n for n in missing})
    elif '<pad>' not in specials and '<eos>' in specials:
      specials['<pad>'] = specials['<eos>']
    self._checkpoint_prefix = _post_processor_prefix(hf)
    convention = (prompt_convention or
                  self._hf_config.get('leapfrog', {}).get('prompt_convention') or 'bos')
    if convention not in ('bos', 'checkpoint'):
      raise ValueError(f"prompt_convention must be 'bos' or 'checkpoint', got "
                       f'{convention!r}.')
    self._prompt_convention = convention
    super().__init__(hf, specials)

  @property
  def prompt_prefix(self) -> list[int]:
    if self._prompt_convention == 'checkpoint':
      return list(self._checkpoint_prefix)
    return [self.bos_id]

  def save(self, directory: str) -> None:
    base = {k: v for k, v in self._hf_config.items() if k != 'leapfrog'}
    self._save(directory, 'hf', base, prompt_convention=self._prompt_convention)


def _post_processor_prefix(hf: hf_tokenizers.Tokenizer) -> list[int]:
  """The ids the tokenizer's post-processor puts before a text (e.g. Llama's ``<s>``;
  none for Qwen's ByteLevel processor or when there is no post-processor)."""
  for probe in ('a', 'hello world', '0'):
    plain = hf.encode(probe, add_special_tokens=False).ids
    if plain:
      break
  full = hf.encode(probe, add_special_tokens=True).ids
  for i in range(len(full) - len(plain) + 1):
    if full[i:i + len(plain)] == plain:
      return full[:i]
  return []


def _token_content(value: Any) -> str | None:
  """A tokenizer_config token entry (str or {'content': str}) -> str."""
  if isinstance(value, dict):
    value = value.get('content')
  return value if isinstance(value, str) and value else None
