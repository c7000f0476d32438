"""Hugging Face interop against transformers itself, per family (Llama 2, Llama 3, Mistral,
Qwen2, Qwen3): import -> same logits, same greedy generation; export -> transformers loads it
and gives the same logits.

Every model is randomly initialised offline on CPU torch (norm weights and biases randomised
too, so those tensors matter) and saved with `save_pretrained`, sharded for some families.
Tolerance (fp32): max |ours - transformers| <= 1e-4 * max(1, max |logit|); observed ~2e-6.
Each family also checks that its feature is exercised: turning it off in our config moves the
logits by far more than the tolerance.
"""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

import decoding  # noqa: E402
import testlib  # noqa: E402
import workbench  # noqa: E402
from decoding import base, registry, runner  # noqa: E402
from models import Transformer, hf  # noqa: E402
from configs import lm  # noqa: E402

_BASE = lm.get_config('tiny').to_dict()  # what `python -m workdir.hf_import` starts from

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOL = 1e-4
LLAMA_TOKENS = dict(bos='<s>', eos='</s>')
QWEN_TOKENS = dict(eos='<|endoftext|>')
SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, initializer_range=0.1)
# family: (config class, model class, config overrides, tokenizer roles, save shard size,
#          the ModelConfig change that turns the family's feature off)
FAMILIES = {
    'llama2': ('LlamaConfig', 'LlamaForCausalLM', dict(vocab_size=300), LLAMA_TOKENS,
               None, None),
    'llama3': ('LlamaConfig', 'LlamaForCausalLM',
               dict(vocab_size=320, tie_word_embeddings=True, rope_theta=500_000.0,
                    rope_scaling=dict(rope_type='llama3', factor=8.0, low_freq_factor=1.0,
                                      high_freq_factor=4.0,
                                      original_max_position_embeddings=8)),
               LLAMA_TOKENS, '60KB', dict(rope_scaling=())),
    'mistral': ('MistralConfig', 'MistralForCausalLM', dict(vocab_size=320, sliding_window=6),
                LLAMA_TOKENS, None, dict(sliding_window=0)),
    'qwen2': ('Qwen2Config', 'Qwen2ForCausalLM', dict(vocab_size=320, tie_word_embeddings=True),
              QWEN_TOKENS, '60KB', dict(qkv_bias=False)),
    'qwen3': ('Qwen3Config', 'Qwen3ForCausalLM', dict(vocab_size=320, head_dim=24),
              QWEN_TOKENS, None, dict(qk_norm=False)),
}


def _tokenizer(directory: str, roles: dict,
               bos_template: bool = False) -> 'transformers.PreTrainedTokenizerFast':
  """A 300-token byte-level BPE trained offline on this file, saved as tokenizer.json; with
  `bos_template` its post-processor starts every text with the BOS token (as Llama's)."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models, pre_tokenizers, processors, trainers
  tk = tokenizers.Tokenizer(models.BPE())
  tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tk.decoder = decoders.ByteLevel()
  tk.train_from_iterator([open(__file__).read()], trainers.BpeTrainer(
      vocab_size=300, special_tokens=sorted(set(roles.values())), show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  if bos_template:
    bos = roles['bos']
    tk.post_processor = processors.TemplateProcessing(
        single=f'{bos} $A', pair=f'{bos} $A {bos} $B',
        special_tokens=[(bos, tk.token_to_id(bos))])
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk,
                                              **{f'{k}_token': v for k, v in roles.items()})
  fast.save_pretrained(directory)
  return fast


def make_hf_model(family: str, directory: str, bos_template: bool = False, **config_kw):
  """Builds, randomises and saves a small model of `family` (plus its tokenizer)."""
  cfg_cls, model_cls, overrides, roles, shard, _ = FAMILIES[family]
  fast = _tokenizer(directory, roles, bos_template)
  ids = {f'{k}_token_id': fast.convert_tokens_to_ids(v) for k, v in roles.items()}
  config = getattr(transformers, cfg_cls)(**SMALL, **overrides, **{**ids, **config_kw})
  torch.manual_seed(sum(map(ord, family)))
  model = getattr(transformers, model_cls)(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'norm' in name:
        p.normal_(1.0, 0.2)
      elif name.endswith('bias'):
        p.normal_(0.0, 0.2)
  model.save_pretrained(directory, **({'max_shard_size': shard} if shard else {}))
  return model, fast


@pytest.fixture(scope='module', params=sorted(FAMILIES))
def imported(request, tmp_path_factory):
  family = request.param
  directory = str(tmp_path_factory.mktemp(family))
  model, fast = make_hf_model(family, directory)
  cfg, params, info = hf.load_checkpoint(directory)
  return family, directory, model, fast, cfg, params, info


def _ours(cfg, params, tokens):
  fn = jax.jit(lambda p, t: Transformer(cfg).apply({'params': p}, t).logits_BxTxV)
  return np.asarray(fn(params, jnp.asarray(tokens)))


def _theirs(model, tokens):
  with torch.no_grad():
    return model(torch.as_tensor(tokens)).logits.numpy()


def test_logits_match_transformers(imported):
  family, directory, model, _, cfg, params, info = imported
  assert info.architecture == FAMILIES[family][1]
  if FAMILIES[family][4]:
    assert os.path.isfile(os.path.join(directory, 'model.safetensors.index.json'))
  tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 20))
  ref, ours = _theirs(model, tokens), _ours(cfg, params, tokens)
  assert ours.shape == ref.shape
  scale = max(1.0, float(np.abs(ref).max()))
  assert float(np.abs(ours - ref).max()) <= TOL * scale
  off = FAMILIES[family][5]
  if off:  # the family's feature is exercised: without it the logits differ a lot
    assert float(np.abs(_ours(dataclasses.replace(cfg, **off), params, tokens) - ref).max()) \
        > 100 * TOL * scale


def test_greedy_generation_matches_transformers(imported):
  _, _, model, _, cfg, params, _ = imported
  rng = np.random.default_rng(1)
  prompts = [rng.integers(0, model.config.vocab_size, n).tolist() for n in (5, 9, 3)]
  eos = model.config.eos_token_id
  expected = []
  for p in prompts:
    with torch.no_grad():
      out = model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False,
                           eos_token_id=eos, pad_token_id=eos)
    expected.append(out[0, len(p):].tolist())
  rows, _ = runner.run_decoder(registry.build('ar'), base.Models(target=Transformer(cfg)),
                               {'target': params}, prompts, max_new_tokens=12, cache_size=32,
                               eos_id=eos, pad_id=eos)
  assert [r.tokens for r in rows] == expected
  assert len(set(sum(expected, []))) >= 3, 'degenerate generation would prove little'


def test_export_loads_in_transformers_and_matches(imported, tmp_path):
  family, _, model, _, cfg, params, _ = imported
  out = str(tmp_path / 'export')
  files = hf.save_checkpoint(params, cfg, out, vocab_size=model.config.vocab_size,
                             token_ids={'eos': model.config.eos_token_id},
                             max_shard_bytes=100_000 if family == 'llama2' else 2**30)
  assert ('model.safetensors.index.json' in os.listdir(out)) == (family == 'llama2')
  assert 'config.json' in files
  back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  assert type(back) is type(model)
  tokens = np.random.default_rng(2).integers(0, model.config.vocab_size, (2, 16))
  np.testing.assert_allclose(_theirs(back, tokens), _theirs(model, tokens), atol=1e-6, rtol=0)


def test_padded_vocabulary_rows_are_zero_and_never_produced(tmp_path):
  """Llama 2's tokenizer fills its embedding table: our appended specials get zero rows that
  the model masks (valid_vocab_size = the checkpoint's 300: logit NEVER_LOGIT, probability
  exactly 0), the original ids keep their logits, and the export drops the padding again."""
  from models import layers  # pylint: disable=g-import-not-at-top
  model, _ = make_hf_model('llama2', str(tmp_path))
  cfg, params, _ = hf.load_checkpoint(str(tmp_path), vocab_size=316)
  assert cfg.vocab_size == 316 and params['lm_head'].shape == (64, 316)
  assert cfg.valid_vocab_size == 300 and not params['lm_head'][:, 300:].any()
  tokens = np.random.default_rng(0).integers(0, 300, (1, 10))
  ours, ref = _ours(cfg, params, tokens), _theirs(model, tokens)
  np.testing.assert_allclose(ours[..., :300], ref, atol=TOL * max(1, np.abs(ref).max()))
  assert (ours[..., 300:] == layers.NEVER_LOGIT).all()
  assert not np.asarray(jax.nn.softmax(ours, -1))[..., 300:].any()
  hf.save_checkpoint(params, cfg, str(tmp_path / 'out'), vocab_size=300)
  assert hf.read_config(str(tmp_path / 'out'))['vocab_size'] == 300


def _run(args, **kw):
  env = testlib.subprocess_env()  # one device
  proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300, **kw)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


@pytest.mark.slow
def test_entry_points_import_sample_export(tmp_path):
  """`python -m workdir.hf_import`, `sample.py --workdir` and `python -m workdir.hf_export`
  on a Qwen2 checkpoint without BOS (its eos becomes our <bos> and <pad> roles, but prompts
  start without it, as transformers' tokenizer does)."""
  import json  # pylint: disable=g-import-not-at-top
  hf_dir, workdir, out = (str(tmp_path / n) for n in ('hf', 'work', 'export'))
  model, fast = make_hf_model('qwen2', hf_dir)
  print(_run(['-m', 'workdir.hf_import', f'--hf_dir={hf_dir}', f'--workdir={workdir}']))
  text = 'def make_hf_model(family'
  lines = _run(['sample.py', f'--workdir={workdir}', f'--prompt={text}', '--max_new_tokens=10',
                '--json']).strip().splitlines()
  row = json.loads(lines[-1])
  eos = fast.convert_tokens_to_ids('<|endoftext|>')
  prompt = fast(text)['input_ids']  # Qwen: no BOS, as its tokenizer has none
  with torch.no_grad():
    ref = model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False,
                         eos_token_id=eos, pad_token_id=eos)[0, len(prompt):].tolist()
  assert row['token_ids'] == ref
  _run(['-m', 'workdir.hf_export', f'--workdir={workdir}', f'--out_dir={out}'])
  back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  assert back.config.vocab_size == model.config.vocab_size
  tokens = np.asarray([prompt])
  np.testing.assert_allclose(_theirs(back, tokens), _theirs(model, tokens), atol=1e-6, rtol=0)
  assert transformers.AutoTokenizer.from_pretrained(out).encode(text) == fast.encode(text)


# (family, tokenizer post-processor adds BOS, config.json overrides): with BOS (Llama,
# Mistral style), without any BOS (Qwen2), and without a BOS in the tokenizer although
# config.json names a bos_token_id (Qwen3: real Qwen configs do).
PROMPT_CASES = {
    'llama2_bos': ('llama2', True, {}),
    'qwen2_no_bos': ('qwen2', False, {}),
    'qwen3_bos_id_no_bos': ('qwen3', False, {'bos_token_id': 0}),
}


@pytest.mark.parametrize('case', sorted(PROMPT_CASES))
def test_prompts_follow_the_checkpoint_and_greedy_matches_transformers_on_text(case, tmp_path):
  """What a user does: import, then sample the same text as transformers' tokenizer +
  generate(). The prompt ids and the greedy continuation must be the same; --add_bos
  overrides the convention either way."""
  from workdir import hf_workdir  # pylint: disable=g-import-not-at-top
  from workdir import loading  # pylint: disable=g-import-not-at-top
  family, bos_template, config_kw = PROMPT_CASES[case]
  hf_dir, workdir = str(tmp_path / 'hf'), str(tmp_path / 'work')
  model, fast = make_hf_model(family, hf_dir, bos_template=bos_template, **config_kw)
  hf_workdir.import_checkpoint(hf_dir, workdir, base_config=_BASE)
  loaded = loading.load_model(workdir)
  tok = loaded.tokenizer
  texts = ['def make_hf_model(family', 'import numpy as np\n', '  return x']
  eos = model.config.eos_token_id
  expected, theirs_ids = [], []
  for text in texts:
    ids = fast(text)['input_ids']
    theirs_ids.append(ids)
    with torch.no_grad():
      out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)),
                           max_new_tokens=12, do_sample=False, eos_token_id=eos,
                           pad_token_id=eos)
    expected.append(out[0, len(ids):].tolist())
  ours_ids = [workbench.read_prompts(tok, prompt=t, prompts_file=None, heldout=0,
                                     prompt_chars=0)[0] for t in texts]
  assert ours_ids == theirs_ids
  assert (ours_ids[0][0] == fast.bos_token_id) == bos_template
  rows, _ = runner.run_decoder(registry.build('ar'), base.Models(loaded.model),
                               {'target': loaded.params}, ours_ids, max_new_tokens=12,
                               cache_size=64, eos_id=eos, pad_id=eos)
  assert [r.tokens for r in rows] == expected
  assert len(set(sum(expected, []))) >= 3, 'degenerate generation would prove little'
  forced = workbench.read_prompts(tok, prompt=texts[0], prompts_file=None, heldout=0,
                                  prompt_chars=0, add_bos=not bos_template)[0]
  assert forced == ([tok.bos_id] + theirs_ids[0] if not bos_template else theirs_ids[0][1:])


@pytest.mark.slow
def test_added_special_tokens_are_never_sampled(tmp_path):
  """A Llama-2-like checkpoint whose table the tokenizer fills: the import appends our
  missing specials as new ids; sampled at temperature 1 (where logit 0 would give them a
  few % of the mass on this small-logit model), no decoder ever produces one."""
  from workdir import hf_workdir  # pylint: disable=g-import-not-at-top
  from workdir import loading  # pylint: disable=g-import-not-at-top
  hf_dir, workdir = str(tmp_path / 'hf'), str(tmp_path / 'work')
  model, fast = make_hf_model('llama2', hf_dir, bos_template=True)
  hf_workdir.import_checkpoint(hf_dir, workdir, base_config=_BASE)
  loaded = loading.load_model(workdir)
  V = model.config.vocab_size
  assert loaded.model.cfg.vocab_size > V == loaded.model.cfg.valid_vocab_size
  prompts = [fast(t)['input_ids'] for t in ('def ', 'import os', 'x = [', 'return ')]
  for name in ('ar', 'prompt_lookup'):
    dec = registry.build(name, {}, decoding.SamplingConfig(temperature=1.0))
    rows, _ = runner.run_decoder(dec, base.Models(loaded.model), {'target': loaded.params},
                                 prompts, max_new_tokens=64, cache_size=96, eos_id=-1,
                                 pad_id=fast.eos_token_id)
    tokens = sum((r.tokens for r in rows), [])
    assert len(tokens) == 4 * 64 and max(tokens) < V, (name, sorted(set(tokens) - set(range(V))))
