"""Tokenizers: byte-level (default), byte-level BPE trained offline, Hugging Face.

Every tokenizer has the same 16 special tokens (`SPECIAL_TOKENS`), looked up by
name with `special_id('<think>')`. Ids are plain Python ints; arrays are int32.

Contracts shared by all kinds:

* `encode(text)` never turns literal text such as ``"<eos>"`` into a special id:
  special ids enter a sequence only through `special_id` / `bos_id` / ... (or
  ``add_bos``/``add_eos``). Training text therefore cannot inject control tokens.
* `decode(ids)` never raises: invalid UTF-8 becomes U+FFFD, and ids outside
  ``[0, vocab_size)`` are treated like specials (dropped with
  ``skip_special=True``, shown as U+FFFD otherwise) so that a model with a
  padded embedding table can be decoded safely.
* Round trip: ``decode(encode(s)) == s`` for every str ``s`` for `ByteTokenizer`
  and `BPETokenizer`. (Lone surrogates, which are not valid Unicode text and
  cannot be UTF-8 encoded, are replaced by U+FFFD first.)
* `token_byte_lengths()` -> int32 ``[V]``: UTF-8 bytes each id stands for (0 for
  specials), so ``sum(lengths[encode(s)]) == len(s.encode())`` for byte-level
  tokenizers; used for bits-per-byte.
* `save(dir)` writes ``tokenizer_config.json`` (plus ``tokenizer.json`` for BPE
  and HF); `load_tokenizer(dir)` reverses it. The config keeps the Hugging Face
  keys (``bos_token``, ...) so saved BPE tokenizers also load in `transformers`,
  and puts our own data under the key ``"leapfrog"``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import tokenizers as hf_tokenizers

from data.tokenizer_base import (CONFIG_FILE, SPECIAL_TOKENS, TOKENIZER_FILE,
                                 ByteTokenizer, Tokenizer, read_json)
from data.tokenizers_hf import BPETokenizer, HFTokenizer, train_bpe

__all__ = ['SPECIAL_TOKENS', 'KINDS', 'Tokenizer', 'ByteTokenizer',
           'BPETokenizer', 'HFTokenizer', 'train_bpe', 'load_tokenizer',
           'make_tokenizer']

KINDS = ('byte', 'bpe', 'hf')


def load_tokenizer(directory: str) -> Tokenizer:
  """Loads what `Tokenizer.save(directory)` wrote (or a plain HF directory).

  Raises:
    FileNotFoundError: naming ``directory`` if it or its files are missing.
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'Tokenizer directory {directory!r} does not exist.')
  config = read_json(os.path.join(directory, CONFIG_FILE))
  kind = config.get('leapfrog', {}).get('kind')
  if kind == 'byte':
    return ByteTokenizer()
  has_json = os.path.isfile(os.path.join(directory, TOKENIZER_FILE))
  if kind == 'bpe' and has_json:
    return BPETokenizer(hf_tokenizers.Tokenizer.from_file(
        os.path.join(directory, TOKENIZER_FILE)))
  if kind in ('hf', None) and has_json:
    return HFTokenizer(directory)
  raise FileNotFoundError(
      f'No tokenizer in {directory!r}: expected {CONFIG_FILE} written by '
      f'Tokenizer.save() or a Hugging Face {TOKENIZER_FILE}.')


def make_tokenizer(kind: str, *, vocab_size: int = 0, path: str = '',
                   texts: Callable[[], Iterable[str]] | None = None
                   ) -> Tokenizer:
  """Builds a tokenizer from config values.

  Args:
    kind: 'byte' (vocab 272), 'bpe' (train on ``texts()`` to ``vocab_size``,
      or, when ``path`` is given, load a BPE tokenizer saved there), or 'hf'
      (load the ``tokenizer.json`` at ``path``).
    vocab_size: BPE target vocabulary size (specials included).
    path: directory (or tokenizer.json file for 'hf') to load from.
    texts: zero-argument callable returning the BPE training documents.
  """
  if kind == 'byte':
    return ByteTokenizer()
  if kind == 'bpe':
    if path:
      tokenizer = load_tokenizer(path)
      if not isinstance(tokenizer, BPETokenizer):
        raise ValueError(f'{path!r} holds a {type(tokenizer).__name__}, not '
                         'a BPE tokenizer.')
      return tokenizer
    if texts is None or vocab_size <= 0:
      raise ValueError("kind='bpe' needs texts=callable and vocab_size > 0 "
                       '(or path= of a saved BPE tokenizer).')
    return train_bpe(texts(), vocab_size)
  if kind == 'hf':
    if not path:
      raise ValueError("kind='hf' needs path= (a directory with "
                       'tokenizer.json, or the file itself).')
    return HFTokenizer(path)
  raise ValueError(f'Unknown tokenizer kind {kind!r}; expected one of {KINDS}.')
