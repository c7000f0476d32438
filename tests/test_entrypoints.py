"""train.py -> sample.py round trip, and sample.py's own errors."""

import json
import os
import subprocess
import sys

import pytest

import testlib
from decoding import Models, registry, run_decoder
from workdir import loading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sample(*args):
  env = testlib.subprocess_env()  # one device
  return subprocess.run([sys.executable, 'sample.py', *args], cwd=ROOT, capture_output=True,
                        text=True, env=env)


def test_sample_json_round_trip(trained_workdir, tmp_path):
  prompts = tmp_path / 'prompts.jsonl'
  prompts.write_text('\n'.join(json.dumps(p) for p in ['def f(x):', 'import os\n']))
  out = _sample(f'--workdir={trained_workdir}', f'--prompts_file={prompts}',
                '--max_new_tokens=12', '--json')
  assert out.returncode == 0, out.stderr
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{')]
  assert [r['prompt'] for r in rows] == ['def f(x):', 'import os\n']
  loaded = loading.load_model(trained_workdir)
  tok = loaded.tokenizer
  ref, _ = run_decoder(registry.build('ar'), Models(loaded.model), {'target': loaded.params},
                       [tok.encode(r['prompt'], add_bos=True) for r in rows], max_new_tokens=12,
                       cache_size=64, eos_id=tok.eos_id, pad_id=tok.pad_id)
  for r, row in zip(rows, ref):
    assert r['token_ids'] == row.tokens
    assert r['text'] == tok.decode(row.tokens)
    assert r['stats']['generated'] == len(row.tokens) == r['stats']['target_forwards']


def test_sample_lists_decoders_and_rejects_bad_input(trained_workdir, tmp_path):
  """Every bad input: one line on stderr, exit code 2."""
  no_key = tmp_path / 'no_key.jsonl'
  no_key.write_text(json.dumps({'prompt': 'ok'}) + '\n' + json.dumps({'text': 'x'}) + '\n')
  out = _sample('--list_decoders')
  assert out.returncode == 0 and out.stdout.startswith('ar ')
  cases = [
      ([f'--workdir={tmp_path}', '--prompt=x'], 'is not a training workdir'),
      ([f'--workdir={trained_workdir}', '--prompt='], 'Empty prompt'),
      ([f'--workdir={trained_workdir}'], 'Give exactly one of'),
      ([f'--workdir={trained_workdir}', '--prompt=' + 'x' * 150, '--cache_size=128'],
       'Prompt 0 has 151 tokens; with max_new_tokens=64 it needs 215 cache slots but the cache has 128'),
      ([f'--workdir={trained_workdir}', '--prompt=x', '--decoder=nope'],
       "Unknown decoder 'nope'"),
      ([f'--workdir={trained_workdir}', '--prompt=x', '--decoder_config.gamma=2'],
       'Unknown config key'),
      ([f'--workdir={trained_workdir}', '--prompt=x', '--mesh=data=3'],
       'needs 3 devices but 1 are available'),
      # A non-finite sampling value (the others: test_decoding_sampling, in process; each
      # case here is a 2.7 s process start).
      ([f'--workdir={trained_workdir}', '--prompt=x', '--temperature=nan'],
       'temperature must be a finite number, got nan'),
      # A prompts file line without its key, or not JSON.
      ([f'--workdir={trained_workdir}', f'--prompts_file={no_key}'],
       'line 2: expected a JSON string or an object with a "prompt" string, got keys [\'text\']'),
      # --max_new_tokens beyond the model's maximum length (256), a cache beyond memory.
      ([f'--workdir={trained_workdir}', '--prompt=x', '--max_new_tokens=100000000'],
       "--max_new_tokens=100000000 does not fit the model's maximum length of 256"),
      ([f'--workdir={trained_workdir}', '--prompt=x', f'--cache_size={10**11}'],
       'is free: lower --max_new_tokens, --batch_size or --cache_size'),
  ]
  for args, match in cases:
    out = _sample(*args)
    assert out.returncode == 2, (args, out.returncode, out.stderr[-2000:])
    assert match in out.stderr, (args, out.stderr[-2000:])
    assert out.stderr.count('\n') == 1 and out.stderr.startswith('error: '), (
        args, out.stderr[-2000:])
