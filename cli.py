"""Shared command-line plumbing for train.py and sample.py: flag parsing with clear errors,
multi-host initialisation, and CPU-friendly defaults."""

from __future__ import annotations

import os
import re
import sys
from typing import Callable, Sequence

from absl import flags


class UsageError(SystemExit):
  pass


def _config_keys(argv: Sequence[str], flag: str) -> list[str]:
  pat = re.compile(rf'^--{flag}\.([A-Za-z0-9_.]+)=')
  return [m.group(1) for a in argv if (m := pat.match(a))]


def parse_flags(config_flag: str = 'config') -> Callable[[list[str]], list[str]]:
  """An absl flags parser that turns config-override failures into one clear message."""
  def parser(argv: list[str]) -> list[str]:
    try:
      return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
      keys = _config_keys(argv, config_flag)
      raise UsageError(f'Unknown config key in {", ".join("--" + config_flag + "." + k for k in keys)}'
                       f' ({e}). Overrides must name existing keys; see the config file.') from None
    except flags.Error as e:
      raise UsageError(f'Bad flag: {e}') from None
  return parser


def quiet_logging(argv: Sequence[str]) -> None:
  """Library logs (Orbax, TFDS) drown the run's own output: ERROR only, unless --verbosity.

  The run's own warnings (e.g. a checkpoint fallback) are printed, not logged."""
  if not any(a.startswith(('--verbosity', '-v=')) for a in argv):
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.ERROR)


def maybe_initialize_distributed() -> None:
  """Calls jax.distributed.initialize() when the environment describes a multi-process job.

  Triggers: JAX_COORDINATOR_ADDRESS (an explicit cluster: host:port of process 0), a SLURM job
  with several tasks, a TPU pod slice (TPU_WORKER_HOSTNAMES with several hosts), or
  LEAPFROG_DISTRIBUTED=1 (jax's own cluster detection: Open MPI, Kubernetes JobSets, ...).
  LEAPFROG_DISTRIBUTED=0 disables it. With an explicit coordinator, JAX_NUM_PROCESSES and
  JAX_PROCESS_ID give the job's size and this process's rank (jax itself reads only the
  address; a managed cluster that it detects supplies the other two).
  """
  if os.environ.get('LEAPFROG_DISTRIBUTED') == '0':
    return
  multi_slurm = int(os.environ.get('SLURM_NTASKS', '1')) > 1
  multi_tpu = ',' in os.environ.get('TPU_WORKER_HOSTNAMES', '')
  if (os.environ.get('JAX_COORDINATOR_ADDRESS') or multi_slurm or multi_tpu
      or os.environ.get('LEAPFROG_DISTRIBUTED') == '1'):
    import jax  # pylint: disable=g-import-not-at-top
    kwargs = {}
    for key, env in (('num_processes', 'JAX_NUM_PROCESSES'), ('process_id', 'JAX_PROCESS_ID')):
      if os.environ.get(env):
        try:
          kwargs[key] = int(os.environ[env])
        except ValueError:
          raise UsageError(f'{env}={os.environ[env]!r} is not an integer.') from None
    jax.distributed.initialize(**kwargs)


def fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(2)


def peek_flag(argv: Sequence[str], name: str, default: str) -> str:
  """Reads --name=value (or --name value) from argv before absl parses it."""
  for i, a in enumerate(argv):
    if a.startswith(f'--{name}='):
      return a.split('=', 1)[1]
    if a == f'--{name}' and i + 1 < len(argv):
      return argv[i + 1]
  return default


def config_overrides(argv: Sequence[str], flag: str) -> list[str]:
  """The keys given as --flag.KEY=VALUE on the command line."""
  return _config_keys(argv, flag)


def parse_mesh(spec: str):
  """'data=2,tensor=4' -> a Mesh over the devices ('' -> None: single device)."""
  if not spec:
    return None
  from models import sharding  # pylint: disable=g-import-not-at-top
  shape = {}
  for part in spec.split(','):
    if '=' not in part:
      raise ValueError(f'--mesh expects axis=size pairs like "data=2,tensor=4", got {spec!r}.')
    k, v = part.split('=', 1)
    shape[k.strip()] = int(v)
  return sharding.make_mesh(shape)


def read_prompts(tokenizer, *, prompt: str | None, prompts_file: str | None, heldout: int,
                 prompt_chars: int, data_config: dict | None = None) -> list[list[int]]:
  """Token ids (BOS first) of the prompts given by exactly one of the three sources."""
  import json  # pylint: disable=g-import-not-at-top
  given = sum(x is not None and x != 0 for x in (prompt, prompts_file, heldout or None))
  if given != 1:
    raise ValueError('Give exactly one of --prompt, --prompts_file or --heldout_prompts=N.')
  if prompt is not None:
    texts = [prompt]
  elif prompts_file is not None:
    with open(prompts_file) as f:
      if prompts_file.endswith('.jsonl'):
        texts = []
        for line in f:
          if line.strip():
            obj = json.loads(line)
            texts.append(obj['prompt'] if isinstance(obj, dict) else str(obj))
      else:
        texts = [line.rstrip('\n') for line in f if line.strip()]
  else:
    import data  # pylint: disable=g-import-not-at-top
    cfg = data.DataConfig(**(data_config or {}))
    texts = []
    for doc in data.load_texts(cfg, cfg.eval_split):
      if len(doc) >= prompt_chars:
        texts.append(doc[:prompt_chars])
      if len(texts) == heldout:
        break
  if any(t == '' for t in texts):
    raise ValueError('Empty prompt: every prompt needs at least one character.')
  return [tokenizer.encode(t, add_bos=True) for t in texts]
