"""Hugging Face tokenizer files for an export, written as plain JSON (no `tokenizers` import).

A workdir's `tokenizer/` holds `tokenizer_config.json` whose 'leapfrog' block names the kind:
  byte  ids 0..255 are bytes, 256.. our special tokens: we write an equivalent byte-level
        BPE `tokenizer.json` with no merges (the GPT-2 byte alphabet spells each byte), so
        `AutoTokenizer` encodes text to exactly our ids;
  bpe / hf  the `tokenizer.json` is copied; added tokens whose id is past the exported
        vocabulary (specials appended at import) are dropped.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

TOKENIZER_FILE = 'tokenizer.json'
CONFIG_FILE = 'tokenizer_config.json'
# Our special name -> the tokenizer_config.json key of its role.
ROLE_KEYS = {'<pad>': 'pad_token', '<bos>': 'bos_token', '<eos>': 'eos_token',
             '<mask>': 'mask_token', '<sep>': 'sep_token'}


def bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character map."""
  bs = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1))
        + list(range(ord('®'), ord('ÿ') + 1)))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return {b: chr(c) for b, c in zip(bs, cs)}


def byte_tokenizer_json(special_tokens: Sequence[str]) -> dict[str, Any]:
  """tokenizer.json equal to our ByteTokenizer: byte b -> id b, special i -> id 256 + i."""
  level = {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': False,
           'use_regex': False}
  vocab = {ch: b for b, ch in bytes_to_unicode().items()}
  return {
      'version': '1.0', 'truncation': None, 'padding': None,
      'added_tokens': [{'id': 256 + i, 'content': s, 'single_word': False, 'lstrip': False,
                        'rstrip': False, 'normalized': False, 'special': True}
                       for i, s in enumerate(special_tokens)],
      'normalizer': None, 'pre_tokenizer': level, 'post_processor': None, 'decoder': level,
      'model': {'type': 'BPE', 'dropout': None, 'unk_token': None,
                'continuing_subword_prefix': None, 'end_of_word_suffix': None,
                'fuse_unk': False, 'byte_fallback': False, 'ignore_merges': False,
                'vocab': dict(sorted(vocab.items(), key=lambda kv: kv[1])), 'merges': []},
  }


def _read(path: str) -> dict[str, Any]:
  if not os.path.isfile(path):
    return {}
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def export_tokenizer(tokenizer_dir: str, out_dir: str, *, special_ids: dict[str, int],
                     special_tokens: Sequence[str], vocab_size: int,
                     model_max_length: int) -> list[str]:
  """Writes tokenizer.json + tokenizer_config.json for `AutoTokenizer` into `out_dir`.

  Args:
    tokenizer_dir: the workdir's tokenizer/ directory.
    special_ids: our special name -> id (from the loaded tokenizer).
    special_tokens: the names of our specials in id order (for the byte kind).
    vocab_size: ids of the exported model; added tokens at or past it are dropped.
    model_max_length: written to tokenizer_config.json.
  """
  config = _read(os.path.join(tokenizer_dir, CONFIG_FILE))
  kind = config.get('leapfrog', {}).get('kind')
  if kind == 'byte':
    spec = byte_tokenizer_json(special_tokens)
  elif os.path.isfile(os.path.join(tokenizer_dir, TOKENIZER_FILE)):
    spec = _read(os.path.join(tokenizer_dir, TOKENIZER_FILE))
  else:
    raise FileNotFoundError(f'{tokenizer_dir} has neither a byte tokenizer config nor a '
                            f'{TOKENIZER_FILE} to export.')
  spec['added_tokens'] = [t for t in spec.get('added_tokens', []) if t['id'] < vocab_size]
  id_to_content = {t['id']: t['content'] for t in spec['added_tokens']}
  vocab = spec.get('model', {}).get('vocab')
  if isinstance(vocab, dict):
    id_to_content.update({i: tok for tok, i in vocab.items() if i not in id_to_content})
  base = {k: v for k, v in config.items() if k not in ('leapfrog', 'added_tokens_decoder')}
  base.update(tokenizer_class='PreTrainedTokenizerFast', model_max_length=model_max_length,
              clean_up_tokenization_spaces=False)
  if kind in ('byte', 'bpe'):  # ours never turn text like '<eos>' into a special token
    base['split_special_tokens'] = True
  for name, key in ROLE_KEYS.items():
    token_id = special_ids.get(name)
    if token_id is not None and token_id in id_to_content:
      base[key] = id_to_content[token_id]
    else:
      base.pop(key, None)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, TOKENIZER_FILE), 'w', encoding='utf-8') as f:
    json.dump(spec, f, ensure_ascii=False)
  with open(os.path.join(out_dir, CONFIG_FILE), 'w', encoding='utf-8') as f:
    json.dump(base, f, indent=2, ensure_ascii=False)
  return [TOKENIZER_FILE, CONFIG_FILE]


def fill_roles(hf_dir: str, out_dir: str, token_ids: dict[str, Any]) -> None:
  """Copies the tokenizer files of an HF checkpoint into `out_dir`, filling absent roles.

  A missing bos_token becomes config.json's bos_token_id's token or else the eos token
  (Qwen has no BOS; our training pipelines frame documents with one, prompts follow the
  checkpoint's post-processor instead), a missing pad_token the eos token, so that neither
  is appended as a new, untrained token. Other absent specials are left for the tokenizer
  loader to append (and the model masks them: `ModelConfig.valid_vocab_size`).
  """
  spec = _read(os.path.join(hf_dir, TOKENIZER_FILE))
  if not spec:
    raise FileNotFoundError(f'No {TOKENIZER_FILE} in {hf_dir}: the import needs the Hugging '
                            'Face fast-tokenizer file.')
  config = _read(os.path.join(hf_dir, CONFIG_FILE))
  roles = _read(os.path.join(hf_dir, 'special_tokens_map.json'))
  roles.update(config)
  id_to_content = {t['id']: t['content'] for t in spec.get('added_tokens', [])}
  vocab = spec.get('model', {}).get('vocab')
  if isinstance(vocab, dict):
    id_to_content.update({i: tok for tok, i in vocab.items() if i not in id_to_content})

  def content(value: Any) -> str | None:
    if isinstance(value, dict):
      value = value.get('content')
    return value if isinstance(value, str) and value else None

  def by_id(value: Any) -> str | None:
    if isinstance(value, list):
      value = value[0] if value else None
    return id_to_content.get(value) if isinstance(value, int) else None

  eos = content(roles.get('eos_token')) or by_id(token_ids.get('eos'))
  filled = dict(roles)
  if eos and not content(roles.get('eos_token')):
    filled['eos_token'] = eos
  if not content(roles.get('bos_token')):
    bos = by_id(token_ids.get('bos')) or eos
    if bos:
      filled['bos_token'] = bos
  if not content(roles.get('pad_token')):
    pad = by_id(token_ids.get('pad')) or eos
    if pad:
      filled['pad_token'] = pad
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, TOKENIZER_FILE), 'w', encoding='utf-8') as f:
    json.dump(spec, f, ensure_ascii=False)
  with open(os.path.join(out_dir, CONFIG_FILE), 'w', encoding='utf-8') as f:
    json.dump(filled, f, indent=2, ensure_ascii=False)
