"""Tests for data.tokenizers: round trips, specials, byte lengths, save/load."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tokenizers as hf_lib
from hypothesis import given, settings
from hypothesis import strategies as st

from data import tokenizers as tk

_SPECIALS = ['<pad>', '<bos>', '<eos>', '<mask>', '<sep>', '<think>',
             '</think>', '<latent>', '<pause>'] + [f'<extra_{i}>'
                                                   for i in range(7)]
_SAMPLES = ['', 'a', 'def f(x):\n    return x\n', 'héllo wörld ☃ 日本語 🙂',
            '  leading spaces\tand tabs\r\n', 'literal <eos> and <pad> text']


def test_special_tokens_constant():
  assert list(tk.SPECIAL_TOKENS) == _SPECIALS


def test_byte_tokenizer_layout():
  tok = tk.ByteTokenizer()
  assert tok.vocab_size == 272
  assert tok.encode('A\xe9') == [65, 0xC3, 0xA9]
  assert [tok.special_id(n) for n in _SPECIALS] == list(range(256, 272))
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id) == (256, 257, 258,
                                                                259)
  assert tok.encode('hi', add_bos=True, add_eos=True) == [257, 104, 105, 258]
  assert tok.token_byte_lengths().tolist() == [1] * 256 + [0] * 16


@settings(max_examples=200, deadline=None, database=None)
@given(st.text())
def test_byte_round_trip(text):
  tok = tk.ByteTokenizer()
  assert tok.decode(tok.encode(text)) == text
  assert tok.decode(np.asarray(tok.encode(text), np.int32)) == text


@settings(max_examples=200, deadline=None, database=None)
@given(st.text())
def test_bpe_round_trip(bpe, text):
  assert bpe.decode(bpe.encode(text)) == text


@settings(max_examples=100, deadline=None, database=None)
@given(st.text())
def test_byte_lengths_sum_to_utf8_length(bpe, text):
  for tok in (tk.ByteTokenizer(), bpe):
    lengths = tok.token_byte_lengths()
    assert lengths.shape == (tok.vocab_size,) and lengths.dtype == np.int32
    ids = tok.encode(text)
    assert int(lengths[ids].sum()) == len(text.encode('utf-8'))


def test_bpe_trained_size_and_merges(bpe, stdlib_texts):
  assert bpe.vocab_size == 400
  text = stdlib_texts[0][:2000]
  # Merges make BPE shorter than bytes on text like its training data.
  assert len(bpe.encode(text)) < 0.8 * len(text.encode('utf-8'))


@pytest.mark.parametrize('kind', ['byte', 'bpe'])
def test_specials_distinct_in_range_and_zero_bytes(kind, bpe):
  tok = tk.ByteTokenizer() if kind == 'byte' else bpe
  ids = [tok.special_id(n) for n in _SPECIALS]
  assert len(set(ids)) == 16
  assert all(0 <= i < tok.vocab_size for i in ids)
  assert not tok.token_byte_lengths()[ids].any()
  for text in _SAMPLES:  # Text never encodes to a special id.
    assert not set(tok.encode(text)) & set(ids)
  with pytest.raises(KeyError, match='<nope>'):
    tok.special_id('<nope>')


@pytest.mark.parametrize('kind', ['byte', 'bpe'])
def test_decode_specials_and_bad_ids_never_raise(kind, bpe):
  tok = tk.ByteTokenizer() if kind == 'byte' else bpe
  ids = [tok.bos_id] + tok.encode('ok') + [tok.eos_id, tok.vocab_size + 5, -1]
  assert tok.decode(ids) == 'ok'
  assert tok.decode(ids, skip_special=False) == '<bos>ok<eos>\ufffd\ufffd'


def test_decode_invalid_utf8_is_replaced():
  tok = tk.ByteTokenizer()
  assert tok.decode([0xFF, 104, 0xC3]) == '\ufffdh\ufffd'


def test_lone_surrogate_becomes_replacement_char(bpe):
  for tok in (tk.ByteTokenizer(), bpe):
    assert tok.decode(tok.encode('a\ud800b')) == 'a\ufffdb'


@pytest.mark.parametrize('kind', ['byte', 'bpe'])
def test_save_load_round_trip(kind, bpe, tmp_path):
  tok = tk.ByteTokenizer() if kind == 'byte' else bpe
  tok.save(str(tmp_path))
  assert os.path.isfile(tmp_path / 'tokenizer_config.json')
  loaded = tk.load_tokenizer(str(tmp_path))
  assert type(loaded) is type(tok)
  assert loaded.vocab_size == tok.vocab_size
  assert loaded.special_ids == tok.special_ids
  for text in _SAMPLES:
    assert loaded.encode(text) == tok.encode(text)
  np.testing.assert_array_equal(loaded.token_byte_lengths(),
                                tok.token_byte_lengths())


def test_saved_bpe_has_hf_config(bpe, tmp_path):
  bpe.save(str(tmp_path))
  config = json.loads((tmp_path / 'tokenizer_config.json').read_text())
  assert config['eos_token'] == '<eos>' and config['pad_token'] == '<pad>'
  assert config['leapfrog']['kind'] == 'bpe'
  raw = hf_lib.Tokenizer.from_file(str(tmp_path / 'tokenizer.json'))
  assert raw.token_to_id('<think>') == bpe.special_id('<think>')


def _write_hf_tokenizer(directory, with_config: bool) -> hf_lib.Tokenizer:
  """A byte-level BPE tokenizer.json in Llama's special-token style."""
  raw = hf_lib.Tokenizer(hf_lib.models.BPE())
  raw.pre_tokenizer = hf_lib.pre_tokenizers.ByteLevel(add_prefix_space=False)
  raw.decoder = hf_lib.decoders.ByteLevel()
  trainer = hf_lib.trainers.BpeTrainer(
      vocab_size=320, special_tokens=['<s>', '</s>', '<unk>'],
      initial_alphabet=hf_lib.pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False)
  raw.train_from_iterator(['hello world, hello code'] * 20, trainer)
  os.makedirs(directory, exist_ok=True)
  raw.save(os.path.join(directory, 'tokenizer.json'))
  if with_config:
    with open(os.path.join(directory, 'tokenizer_config.json'), 'w') as f:
      json.dump({'bos_token': '<s>',
                 'eos_token': {'content': '</s>', 'special': True},
                 'chat_template': 'keep me'}, f)
  return raw


def test_hf_tokenizer_maps_and_adds_specials(tmp_path):
  raw = _write_hf_tokenizer(str(tmp_path), with_config=True)
  base_size = raw.get_vocab_size()
  tok = tk.make_tokenizer('hf', path=str(tmp_path))
  assert isinstance(tok, tk.HFTokenizer)
  assert tok.bos_id == raw.token_to_id('<s>')
  assert tok.eos_id == raw.token_to_id('</s>')
  # The 14 specials the file lacks are appended after its vocabulary.
  added = [tok.special_id(n) for n in _SPECIALS if n not in ('<bos>', '<eos>')]
  assert sorted(added) == list(range(base_size, base_size + 14))
  assert tok.vocab_size == base_size + 14
  plain = 'hello world 日本'
  assert tok.encode(plain) == raw.encode(plain).ids  # Same ids as the library.
  text = 'hello world <s> 日本'  # Literal '<s>' is text, not bos.
  assert tok.bos_id in raw.encode(text).ids
  assert tok.bos_id not in tok.encode(text)
  assert tok.decode(tok.encode(text)) == text
  lengths = tok.token_byte_lengths()
  assert int(lengths[tok.encode(text)].sum()) == len(text.encode())
  # Save + load keeps the mapping and the original config keys.
  out = tmp_path / 'saved'
  tok.save(str(out))
  again = tk.load_tokenizer(str(out))
  assert isinstance(again, tk.HFTokenizer)
  assert again.special_ids == tok.special_ids
  assert again.encode(text) == tok.encode(text)
  config = json.loads((out / 'tokenizer_config.json').read_text())
  assert config['chat_template'] == 'keep me' and config['eos_token'] == '</s>'


def test_hf_tokenizer_from_file_without_adding(tmp_path):
  raw = _write_hf_tokenizer(str(tmp_path), with_config=False)
  tok = tk.HFTokenizer(str(tmp_path / 'tokenizer.json'),
                       add_missing_specials=False)
  assert tok.vocab_size == raw.get_vocab_size()
  with pytest.raises(KeyError, match='<eos>'):
    _ = tok.eos_id  # No config names an eos token and none is added.
  # A plain HF directory (no leapfrog config) also loads via load_tokenizer.
  assert isinstance(tk.load_tokenizer(str(tmp_path)), tk.HFTokenizer)


def test_make_tokenizer_kinds_and_errors(tmp_path, stdlib_texts):
  assert isinstance(tk.make_tokenizer('byte'), tk.ByteTokenizer)
  trained = tk.make_tokenizer('bpe', vocab_size=300,
                              texts=lambda: iter(stdlib_texts))
  assert isinstance(trained, tk.BPETokenizer) and trained.vocab_size == 300
  trained.save(str(tmp_path / 'bpe'))
  loaded = tk.make_tokenizer('bpe', path=str(tmp_path / 'bpe'))
  assert loaded.encode(stdlib_texts[0]) == trained.encode(stdlib_texts[0])
  with pytest.raises(ValueError, match="'byte', 'bpe', 'hf'"):
    tk.make_tokenizer('wordpiece')
  with pytest.raises(ValueError, match='texts'):
    tk.make_tokenizer('bpe', vocab_size=300)
  with pytest.raises(ValueError, match='272'):
    tk.train_bpe(stdlib_texts, 100)
  missing = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='nowhere'):
    tk.load_tokenizer(missing)
  with pytest.raises(FileNotFoundError, match='nowhere'):
    tk.make_tokenizer('hf', path=missing)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='empty'):
    tk.load_tokenizer(str(tmp_path / 'empty'))


def _hf_dir(directory, style):
  """A small Hugging Face tokenizer directory in one of the styles public checkpoints use:
  'llama' (Metaspace + byte fallback, post-processor '<s> $A'), 'bytelevel_bos' (Llama 3:
  ByteLevel + '<|begin_of_text|> $A'), 'qwen' (ByteLevel, no post-processor template, no BOS
  token), 'none' (no post-processor at all)."""
  from tokenizers import (decoders, models, pre_tokenizers,  # pylint: disable=g-import-not-at-top
                          processors, trainers)
  os.makedirs(directory, exist_ok=True)
  text = [open(__file__).read()]
  if style == 'llama':
    tok = hf_lib.Tokenizer(models.BPE(byte_fallback=True, unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials, bos, eos = ['<unk>', '<s>', '</s>'], '<s>', '</s>'
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False)
  else:
    tok = hf_lib.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    bos = '<|begin_of_text|>' if style == 'bytelevel_bos' else None
    eos = '<|endoftext|>'
    specials = [eos] + ([bos] if bos else [])
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(text, trainer)
  if style in ('llama', 'bytelevel_bos'):
    tok.post_processor = processors.TemplateProcessing(
        single=f'{bos} $A', special_tokens=[(bos, tok.token_to_id(bos))])
  elif style == 'qwen':
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
  tok.save(os.path.join(directory, 'tokenizer.json'))
  config = {'tokenizer_class': 'PreTrainedTokenizerFast', 'eos_token': eos,
            **({'bos_token': bos} if bos else {})}
  with open(os.path.join(directory, 'tokenizer_config.json'), 'w') as f:
    json.dump(config, f)
  return directory


@pytest.mark.parametrize('style', ['llama', 'bytelevel_bos', 'qwen', 'none'])
def test_checkpoint_prompt_convention_matches_transformers(tmp_path, style):
  """With prompt_convention='checkpoint' (imports) a prompt's ids are what transformers'
  tokenizer(text) gives; with the default ('bos', models trained here) <bos> comes first;
  the convention survives save/load; add_bos forces either way."""
  transformers = pytest.importorskip('transformers')
  directory = _hf_dir(str(tmp_path / 'hf'), style)
  theirs = transformers.AutoTokenizer.from_pretrained(directory)
  ours = tk.HFTokenizer(directory, prompt_convention='checkpoint')
  ours.save(str(tmp_path / 'saved'))
  reloaded = tk.load_tokenizer(str(tmp_path / 'saved'))
  trained_here = tk.HFTokenizer(directory)
  for text in ('def f(x):\n    return x', ' leading space', 'x'):
    ids = theirs(text)['input_ids']
    assert ours.encode_prompt(text) == ids
    assert reloaded.encode_prompt(text) == ids
    assert trained_here.encode_prompt(text) == [trained_here.bos_id] + ours.encode(text)
    assert ours.encode_prompt(text, add_bos=False) == ours.encode(text)
    forced = ours.encode_prompt(text, add_bos=True)
    assert forced[1:] == ours.encode(text) and len(forced) == len(ours.encode(text)) + 1
  assert (ours.prompt_prefix != []) == (style in ('llama', 'bytelevel_bos'))


def test_our_tokenizers_start_prompts_with_bos(bpe):
  for tok in (tk.ByteTokenizer(), bpe):
    assert tok.encode_prompt('ab') == [tok.bos_id] + tok.encode('ab')
    assert tok.encode_prompt('ab', add_bos=False) == tok.encode('ab')
