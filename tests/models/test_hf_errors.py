"""Bad Hugging Face input gives errors that name the problem; safetensors I/O round trips.

No torch needed: checkpoints are written with our own streaming writer, which the
transformers tests (test_hf_interop.py) show transformers reads.
"""

import json
import os

import ml_dtypes
import numpy as np
import pytest

import testlib

from models import hf
from models.hf import config_map, convert, safetensors_io
from configs import lm

_BASE = lm.get_config('tiny').to_dict()  # what `python -m workdir.hf_import` starts from

LLAMA = dict(architectures=['LlamaForCausalLM'], model_type='llama', vocab_size=40,
             hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0,
             tie_word_embeddings=False, max_position_embeddings=64)


def _write(directory, hf_cfg, drop=(), rename=None, reshape=None, extra=None, **write_kw):
  """A checkpoint for `hf_cfg` with random tensors, minus `drop`, renamed or reshaped, plus
  `extra` {name: array}."""
  cfg, _ = config_map.to_model_config(hf_cfg)
  rng = np.random.default_rng(0)
  plans = []
  for e in convert.entries(cfg):
    if e.hf_name in drop:
      continue
    shape = (reshape or {}).get(e.hf_name, e.hf_shape)
    value = rng.normal(size=shape).astype(np.float32)
    plans.append(safetensors_io.TensorPlan((rename or {}).get(e.hf_name, e.hf_name), shape,
                                           np.dtype(np.float32), lambda v=value: v))
  plans += [safetensors_io.TensorPlan(k, v.shape, v.dtype, lambda v=v: v)
            for k, v in (extra or {}).items()]
  os.makedirs(directory, exist_ok=True)
  safetensors_io.write_checkpoint(directory, plans, **write_kw)
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(hf_cfg, f)
  return cfg


def test_unsupported_architecture_is_named(tmp_path):
  _write(str(tmp_path), LLAMA)
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(dict(LLAMA, architectures=['GPT2LMHeadModel'], model_type='gpt2'), f)
  with pytest.raises(hf.UnsupportedModelError, match="GPT2LMHeadModel.*supported: .*Llama"):
    hf.load_checkpoint(str(tmp_path))


@pytest.mark.parametrize('change, message', [
    (dict(hidden_act='gelu'), "hidden_act='gelu'"),
    (dict(mlp_bias=True), 'mlp_bias=True'),
    (dict(rope_scaling={'rope_type': 'yarn', 'factor': 4.0}), "RoPE scaling 'yarn'"),
    (dict(rope_parameters={'rope_type': 'linear', 'factor': 2.0, 'rope_theta': 1e4}),
     "RoPE scaling 'linear'"),
    (dict(architectures=['Qwen2ForCausalLM'], model_type='qwen2', use_sliding_window=True),
     'use_sliding_window'),
])
def test_unsupported_features_are_named(change, message):
  with pytest.raises(hf.UnsupportedModelError, match=message):
    config_map.to_model_config(dict(LLAMA, **change))


def test_missing_tensors_are_named(tmp_path):
  _write(str(tmp_path), LLAMA, drop=('model.layers.1.mlp.up_proj.weight', 'lm_head.weight'))
  with pytest.raises(hf.MissingTensorsError) as e:
    hf.load_checkpoint(str(tmp_path))
  assert "missing tensors (2): ['lm_head.weight', 'model.layers.1.mlp.up_proj.weight']" in str(
      e.value)


def test_unexpected_and_misshapen_tensors_are_named(tmp_path):
  _write(str(tmp_path), LLAMA, rename={'model.norm.weight': 'model.final_ln.weight'},
         reshape={'model.layers.0.self_attn.k_proj.weight': (16, 16)})
  with pytest.raises(hf.MissingTensorsError) as e:
    hf.load_checkpoint(str(tmp_path))
  msg = str(e.value)
  assert "missing tensors (1): ['model.norm.weight']" in msg
  assert "['model.final_ln.weight']" in msg
  assert 'model.layers.0.self_attn.k_proj.weight: file [16, 16], config implies [8, 16]' in msg


def test_missing_files_are_named(tmp_path):
  with pytest.raises(hf.CheckpointFormatError, match='config.json is missing'):
    hf.load_checkpoint(str(tmp_path))
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(LLAMA, f)
  (tmp_path / 'pytorch_model.bin').write_bytes(b'x')
  with pytest.raises(hf.CheckpointFormatError, match=r"pytorch_model.bin.*only safetensors"):
    hf.load_checkpoint(str(tmp_path))
  _write(str(tmp_path / 'sharded'), LLAMA, max_shard_bytes=4000)
  shards = sorted(f for f in os.listdir(tmp_path / 'sharded') if f.startswith('model-'))
  assert len(shards) > 2
  os.remove(tmp_path / 'sharded' / shards[1])
  with pytest.raises(hf.CheckpointFormatError, match=shards[1]):
    hf.load_checkpoint(str(tmp_path / 'sharded'))


def test_nonzero_output_bias_is_refused(tmp_path):
  """Llama/Qwen3 `attention_bias` also biases o_proj, which we do not have: all-zero o_proj
  biases (what our export writes) import; a non-zero one is refused by name."""
  cfg_dict = dict(LLAMA, attention_bias=True)
  zeros = {f'model.layers.{i}.self_attn.o_proj.bias': np.zeros((16,), np.float32)
           for i in range(2)}
  cfg = _write(str(tmp_path / 'ok'), cfg_dict, extra=zeros)
  assert cfg.qkv_bias and hf.load_checkpoint(str(tmp_path / 'ok'))[0] == cfg
  bad = dict(zeros, **{'model.layers.1.self_attn.o_proj.bias': np.ones((16,), np.float32)})
  _write(str(tmp_path / 'bad'), cfg_dict, extra=bad)
  with pytest.raises(hf.UnsupportedModelError, match='model.layers.1.self_attn.o_proj.bias'):
    hf.load_checkpoint(str(tmp_path / 'bad'))


def test_safetensors_round_trip_bf16_and_shards(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {'a': rng.normal(size=(3, 5)).astype(ml_dtypes.bfloat16),
            'b': rng.normal(size=(7,)).astype(np.float32),
            'c': np.arange(6, dtype=np.int64).reshape(2, 3)}
  plans = [safetensors_io.TensorPlan(k, v.shape, v.dtype, lambda v=v: v)
           for k, v in arrays.items()]
  files = safetensors_io.write_checkpoint(str(tmp_path), plans, max_shard_bytes=60)
  assert len(files) == 2 and os.path.isfile(tmp_path / 'model.safetensors.index.json')
  reader = safetensors_io.SafetensorsReader(str(tmp_path))
  assert reader.names() == ['a', 'b', 'c']
  for k, v in arrays.items():
    got = reader.get(k)
    assert got.dtype == v.dtype and np.array_equal(got, v)


def test_config_round_trip_and_architecture_choice():
  cfg, info = config_map.to_model_config(dict(
      LLAMA, rope_scaling=dict(rope_type='llama3', factor=8.0, low_freq_factor=1.0,
                               high_freq_factor=4.0, original_max_position_embeddings=32)))
  assert cfg.rope_scaling == (8.0, 1.0, 4.0, 32.0) and info.architecture == 'LlamaForCausalLM'
  back, _ = config_map.from_model_config(cfg)
  assert config_map.to_model_config(back)[0] == cfg
  assert config_map.choose_architecture(dataclasses_replace(cfg, rope_scaling=(),
                                                            qk_norm=True)) == 'Qwen3ForCausalLM'
  with pytest.raises(hf.UnsupportedModelError, match='sliding window'):
    config_map.choose_architecture(dataclasses_replace(cfg, rope_scaling=(), sliding_window=8,
                                                       qkv_bias=True))


def dataclasses_replace(cfg, **kw):
  import dataclasses  # pylint: disable=g-import-not-at-top
  return dataclasses.replace(cfg, **kw)


def _tokenizer_json(directory, n_words=30):
  """A word-level tokenizer.json (<unk> <s> </s> + words) and its tokenizer_config.json."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  vocab = {'<unk>': 0, '<s>': 1, '</s>': 2, **{f'w{i}': 3 + i for i in range(n_words)}}
  tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token='<unk>'))
  tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tk.save(os.path.join(directory, 'tokenizer.json'))
  with open(os.path.join(directory, 'tokenizer_config.json'), 'w') as f:
    json.dump({'bos_token': '<s>', 'eos_token': '</s>', 'unk_token': '<unk>'}, f)


def _tree(directory):
  """{relative path: bytes} of every file under `directory` (but the lock's holder note)."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      if name == 'lock' and root == directory:
        continue
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, directory)] = f.read()
  return out


def test_failed_overwrite_import_leaves_the_workdir_intact(tmp_path, trained_workdir):
  """`--overwrite` with a checkpoint that fails to convert: exit code 2, one line, and the
  old workdir byte for byte (the import is built beside it and swapped in only when done;
  only the lock file's note of its last holder changes)."""
  import shutil  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from workdir import loading  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'w')
  shutil.copytree(trained_workdir, workdir)
  before = _tree(workdir)
  broken = str(tmp_path / 'broken')
  _write(broken, LLAMA, drop=('model.layers.1.mlp.up_proj.weight',))
  _tokenizer_json(broken)
  env = testlib.subprocess_env()  # one device
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  out = subprocess.run([sys.executable, '-m', 'workdir.hf_import', f'--hf_dir={broken}',
                        f'--workdir={workdir}', '--overwrite'], cwd=root, env=env,
                       capture_output=True, text=True)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.count('\n') == 1 and 'model.layers.1.mlp.up_proj.weight' in out.stderr
  assert _tree(workdir) == before
  assert sorted(os.listdir(tmp_path)) == ['broken', 'w'], 'no staging folder is left'
  assert loading.load_model(workdir).step == 20


def test_import_replaces_only_a_workdir_and_only_when_asked(tmp_path, trained_workdir):
  import shutil  # pylint: disable=g-import-not-at-top
  from workdir import hf_workdir  # pylint: disable=g-import-not-at-top
  from workdir import loading  # pylint: disable=g-import-not-at-top
  good = str(tmp_path / 'good')
  _write(good, LLAMA)
  _tokenizer_json(good)
  workdir = str(tmp_path / 'w')
  shutil.copytree(trained_workdir, workdir)
  with pytest.raises(ValueError, match='is not empty; pass --overwrite'):
    hf_workdir.import_checkpoint(good, workdir, base_config=_BASE)
  other = tmp_path / 'not_a_workdir'
  other.mkdir()
  (other / 'notes.txt').write_text('mine')
  with pytest.raises(ValueError, match='does not look like a workdir'):
    hf_workdir.import_checkpoint(good, str(other), base_config=_BASE, overwrite=True)
  assert (other / 'notes.txt').read_text() == 'mine'
  hf_workdir.import_checkpoint(good, workdir, base_config=_BASE, overwrite=True)
  loaded = loading.load_model(workdir)
  assert loaded.step == 0 and loaded.config['hf']['architecture'] == 'LlamaForCausalLM'
  assert loaded.model.cfg.valid_vocab_size == 40 < loaded.model.cfg.vocab_size
  assert loaded.tokenizer.prompt_prefix == []  # no post-processor: no BOS, as transformers
  assert sorted(os.listdir(tmp_path)) == ['good', 'not_a_workdir', 'w']
