"""Restore a checkpoint and sample with one or several decoders.

  python sample.py --workdir=DIR [--checkpoint_step=N] --decoder=ar[,NAME[:key=value...]...]
      (--prompt=TEXT | --prompts_file=FILE | --heldout_prompts=N) --max_new_tokens=N
      [--temperature=0 --top_k=0 --top_p=1 --min_p=0 --seed=0] [--json] [--list_decoders]
      [--decoder_config.FIELD=VALUE ...] [--mesh=data=2,tensor=4] [--add_bos=auto|true|false]
      [--repeats=N] [--results_name=NAME]

With several decoders it prints a comparison table (speedup against the first one). A
decoder may carry its own settings (`prompt_lookup:gamma=2`, `layerskip:gamma=1:exit_layer=2`;
in a string setting '/' stands for ','); --decoder_config.FIELD=VALUE sets FIELD for every
decoder that has it.
--json prints one JSON object per prompt and decoder: text, token ids and statistics (stdout
holds only those lines; warnings go to stderr). A prompt longer than the model's maximum
length leaves room for is cut from the left with a warning; a --max_new_tokens beyond it, or
a cache larger than the free memory, is refused.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

import cli
import decoding
import workbench
from benchmarks import common
from decoding import compare
from decoding import limits
from decoding import registry
from workdir import checkpoint

_DECODERS = cli.peek_flag(sys.argv, 'decoder', 'ar').split(',')
try:
  _SETTINGS_DEFAULTS = compare.merged_settings(_DECODERS)
except ValueError as e:
  cli.fail(str(e))

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir to restore.')
_STEP = flags.DEFINE_integer('checkpoint_step', None, 'Checkpoint step (default: newest).')
flags.DEFINE_string('decoder', 'ar', 'Decoder name, or several separated by commas; a '
                    'decoder may carry its own settings: NAME:key=value[:key=value...].')
_PROMPT = flags.DEFINE_string('prompt', None, 'One prompt.')
_PROMPTS_FILE = flags.DEFINE_string(
    'prompts_file', None, 'Prompts: .jsonl (JSON strings or {"prompt": ...}) or one per line.')
_HELDOUT = flags.DEFINE_integer('heldout_prompts', 0,
                                'Take N prompts from held-out (validation) documents.')
_PROMPT_CHARS = flags.DEFINE_integer('prompt_chars', 200,
                                     'Characters of each held-out document used as prompt.')
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', 64, 'Tokens to generate per prompt.')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.0, 'Sampling temperature (0 = greedy).')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'Top-k filter (0 = off).')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'Top-p (nucleus) filter (1 = off).')
_MIN_P = flags.DEFINE_float('min_p', 0.0, 'Min-p filter (0 = off).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed; prompt i uses fold_in(key(seed), i).')
_BATCH = flags.DEFINE_integer('batch_size', 8, 'Prompts per batch.')
_CACHE = flags.DEFINE_integer('cache_size', 0, 'Cache slots (0 = just enough, rounded up).')
_MESH = flags.DEFINE_string('mesh', '', 'Shard decoding, e.g. "data=2,tensor=4".')
_DTYPE = flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16'],
                           'Cast weights and compute to this dtype (default: as trained).')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object per prompt and decoder.')
_REPEATS = flags.DEFINE_integer(
    'repeats', 1, 'Time each decoder this many times (after a warm-up, passes of all decoders '
    'interleaved) and keep its fastest pass: steadier speedups on a busy machine.')
_ADD_BOS = flags.DEFINE_enum('add_bos', 'auto', ['auto', 'true', 'false'],
                             'Start prompts with BOS: auto = as the model was trained (an '
                             "imported checkpoint: as its tokenizer does; Qwen: no BOS).")
_RESULTS = flags.DEFINE_string(
    'results_name', '', 'Also write the comparison table, with the command, commit, device and '
    'versions, to benchmarks/results/NAME.md (what the README quotes).')
_LIST = flags.DEFINE_bool('list_decoders', False, 'List the registered decoders and exit.')
try:
  _SETTINGS = config_flags.DEFINE_config_dict('decoder_config', _SETTINGS_DEFAULTS,
                                              'Decoder settings.', lock_config=True)
except (AttributeError, KeyError):
  cli.fail(f'Unknown config key in --decoder_config: '
           f'{cli.config_overrides(sys.argv, "decoder_config")}; the settings of '
           f'{_DECODERS} are {sorted(_SETTINGS_DEFAULTS.keys()) or "none"}.')


def main(argv):
  if len(argv) > 1:
    cli.fail(f'Unexpected arguments: {argv[1:]}')
  cli.quiet_logging(sys.argv)
  if _LIST.value:
    print(registry.describe())
    return
  if not _WORKDIR.value:
    cli.fail('--workdir is required (a directory written by train.py).')
  overridden = cli.config_overrides(sys.argv, 'decoder_config')
  try:
    for name, value in (('batch_size', _BATCH.value), ('cache_size', _CACHE.value)):
      if value < 0:
        raise ValueError(f'--{name} must be >= 0 (0 = automatic), got {value}.')
    sampling = decoding.SamplingConfig(temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                                       top_p=_TOP_P.value, min_p=_MIN_P.value)
    if _REPEATS.value < 1:
      raise ValueError(f'--repeats must be >= 1, got {_REPEATS.value}.')
    decoders = compare.build_decoders(_DECODERS, _SETTINGS.value, overridden, sampling)
    # the prompts' own errors before the model is loaded (seconds for a large one)
    workbench.check_prompt_sources(prompt=_PROMPT.value, prompts_file=_PROMPTS_FILE.value,
                                   heldout=_HELDOUT.value)
    bench = workbench.Workbench.load(_WORKDIR.value, step=_STEP.value,
                                     mesh=cli.parse_mesh(_MESH.value), dtype=_DTYPE.value)
    decoders = [(label, bench.fit(d)) for label, d in decoders]
    prompts = workbench.read_prompts(
        bench.tokenizer, prompt=_PROMPT.value, prompts_file=_PROMPTS_FILE.value,
        heldout=_HELDOUT.value, prompt_chars=_PROMPT_CHARS.value,
        data_config=bench.config.get('data'),
        add_bos={'auto': None, 'true': True, 'false': False}[_ADD_BOS.value])
    prompts = limits.fit_prompts(prompts, max_new_tokens=_MAX_NEW.value,
                                 max_len=bench.target.model_config.max_seq_len,
                                 prefix=bench.tokenizer.prompt_prefix, warn=cli.warn)
    results = bench.run(decoders, prompts, max_new_tokens=_MAX_NEW.value,
                        cache_size=_CACHE.value, seed=_SEED.value, batch_size=_BATCH.value,
                        repeats=_REPEATS.value)
  except (ValueError, checkpoint.CheckpointError, FileNotFoundError) as e:
    cli.fail(str(e))
  tok, target = bench.tokenizer, bench.target
  if _JSON.value:
    for name, (rows, stats) in results.items():
      for row in rows:
        print(json.dumps(compare.row_json(name, row, stats, tok)))
    return
  print(f'Model: {target.workdir} (step {target.step}); sampling {sampling}')
  for name, (rows, stats) in results.items():
    print(f'\n=== {name} ===')
    bold, plain = ('\x1b[1m', '\x1b[0m') if sys.stdout.isatty() else ('', '')
    for row in rows[:4]:
      print(f'--- prompt {row.index} ---\n{tok.decode(row.prompt)}{bold}'
            f'{tok.decode(row.tokens)}{plain}')
  print()
  table = compare.comparison_table(results, greedy=sampling.greedy)
  print(table)
  if sampling.greedy:
    for name in compare.mismatches(results):
      cli.warn(f'{name} is lossless, yet at temperature 0 its tokens differ from '
               f'{next(iter(results))}\'s: a bug (or, in low precision, a near tie).')
  if _RESULTS.value:
    body = (f'`{target.workdir}` (step {target.step}), {len(prompts)} prompts x '
            f'{_MAX_NEW.value} new tokens, batch size {_BATCH.value}, sampling {sampling}, '
            f'best of {_REPEATS.value} interleaved passes; speedup against the first '
            f'decoder.\n\n{table}')
    print('wrote', common.write_results(_RESULTS.value, 'sample.py: decoders compared', body))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags('decoder_config'))
