"""Prompts for decoders: held-out documents of a run's corpus, a prompts file or one text.

  texts = heldout_texts(bench.config.get('data'), n=8, chars=200)   # the same for every run
  prompts = read_prompts(tok, prompt=None, prompts_file=None, heldout=8, prompt_chars=200,
                         data_config=bench.config.get('data'))       # token ids

The one held-out reader of the project (sample.py, the benchmarks and the notebooks use it).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import data as data_lib


def heldout_texts(data_config: Mapping[str, Any] | None, n: int, chars: int) -> list[str]:
  """The first `chars` characters of the first `n` held-out (validation) documents of the
  corpus `data_config` describes (a run's config['data']) that have at least that many."""
  cfg = data_lib.DataConfig(**(data_config or {}))
  texts: list[str] = []
  if n <= 0:
    return texts
  for doc in data_lib.load_texts(cfg, cfg.eval_split):
    if len(doc) >= chars:
      texts.append(doc[:chars])
    if len(texts) == n:
      break
  return texts


def _file_texts(prompts_file: str) -> list[str]:
  """The prompts of a .jsonl file (JSON strings or {"prompt": ...}) or of a text file (one a
  line); ValueError naming the file and line on bad input."""
  if not os.path.isfile(prompts_file):
    raise ValueError(f'--prompts_file={prompts_file} does not exist.')
  with open(prompts_file, encoding='utf-8', errors='replace') as f:
    if not prompts_file.endswith('.jsonl'):
      return [line.rstrip('\n') for line in f if line.strip()]
    texts = []
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except ValueError as e:
        raise ValueError(f'{prompts_file} line {n} is not JSON ({e}).') from None
      if isinstance(obj, dict):
        if not isinstance(obj.get('prompt'), str):
          raise ValueError(f'{prompts_file} line {n}: expected a JSON string or an object '
                           f'with a "prompt" string, got keys {sorted(obj)}.')
        obj = obj['prompt']
      texts.append(obj if isinstance(obj, str) else json.dumps(obj))
    return texts


def read_prompts(tokenizer: data_lib.Tokenizer, *, prompt: str | None,
                 prompts_file: str | None, heldout: int, prompt_chars: int,
                 data_config: Mapping[str, Any] | None = None,
                 add_bos: bool | None = None) -> list[list[int]]:
  """Token ids of the prompts given by exactly one of the three sources.

  Each prompt starts as the model's tokenizer starts one (`Tokenizer.encode_prompt`: BOS for
  models trained here and checkpoints whose tokenizer adds one, nothing for e.g. Qwen);
  `add_bos` True/False overrides that. Bad input raises ValueError naming the file and line.
  """
  texts = check_prompt_sources(prompt=prompt, prompts_file=prompts_file, heldout=heldout)
  if texts is None:
    texts = heldout_texts(data_config, heldout, prompt_chars)
  _check_texts(texts)
  return [tokenizer.encode_prompt(t, add_bos) for t in texts]


def check_prompt_sources(*, prompt: str | None, prompts_file: str | None,
                         heldout: int) -> list[str] | None:
  """Checks that exactly one source is given and, for --prompt and --prompts_file, reads and
  checks the texts (ValueError otherwise), without a model: a command line can fail before
  it loads one. Returns the texts, or None for held-out prompts (they need the run's corpus
  settings)."""
  given = sum(x is not None and x != 0 for x in (prompt, prompts_file, heldout or None))
  if given != 1:
    raise ValueError('Give exactly one of --prompt, --prompts_file or --heldout_prompts=N.')
  if prompt is not None:
    texts = [prompt]
  elif prompts_file is not None:
    texts = _file_texts(prompts_file)
    if not texts:
      raise ValueError(f'{prompts_file} holds no prompts.')
  else:
    return None
  _check_texts(texts)
  return texts


def _check_texts(texts: list[str]) -> None:
  if any(t == '' for t in texts):
    raise ValueError('Empty prompt: every prompt needs at least one character.')
