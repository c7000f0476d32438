"""Shared command-line plumbing for train.py and sample.py: flag parsing with clear errors,
multi-host initialisation, and CPU-friendly defaults (prompts: `workbench.read_prompts`)."""

from __future__ import annotations

import os
import re
import sys
from typing import Callable, Sequence

import jax
from absl import flags
from absl import logging

from models import sharding


def _config_keys(argv: Sequence[str], flag: str) -> list[str]:
  pat = re.compile(rf'^--{flag}\.([A-Za-z0-9_.]+)=')
  return [m.group(1) for a in argv if (m := pat.match(a))]


def _last_line(text) -> str:
  lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
  return lines[-1] if lines else ''


def _one_line(text) -> str:
  return ' '.join(line.strip() for line in str(text).strip().splitlines() if line.strip())


def parse_flags(config_flag: str = 'config', config_file: bool = False
                ) -> Callable[[list[str]], list[str]]:
  """An absl flags parser that turns every flag failure into one line and exit code 2.

  With `config_file`, `--config_flag` names a config file (`FILE[:ARG]`): a missing file
  and an error raised by its `get_config(ARG)` (e.g. an unknown preset) are reported in one
  line too.
  """
  def parser(argv: list[str]) -> list[str]:
    spec = peek_flag(argv, config_flag, '') if config_file else ''
    if spec and not os.path.isfile(spec.split(':', 1)[0]):
      fail(f'--{config_flag}={spec}: the config file {spec.split(":", 1)[0]!r} does not '
           'exist.')
    try:
      return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
      keys = _config_keys(argv, config_flag)
      if not keys:
        fail(f'--{config_flag}={spec}: {type(e).__name__}: {e}')
      fail(f'Unknown config key in {", ".join("--" + config_flag + "." + k for k in keys)}'
           f' ({e}). Overrides must name existing keys; see the config file.')
    except flags.Error as e:
      if 'Error whilst parsing config file' in str(e):
        fail(f'--{config_flag}={spec}: {_last_line(e)}')
      fail(f'Bad flag: {_last_line(e) if "Traceback" in str(e) else _one_line(e)}')
    except (OSError, ValueError, TypeError) as e:
      fail(f'--{config_flag}={spec}: {_last_line(e)}')
    return []  # not reached: fail() exits
  return parser


def quiet_logging(argv: Sequence[str]) -> None:
  """Library logs (Orbax, TFDS) drown the run's own output: ERROR only, unless --verbosity.

  The run's own warnings (e.g. a checkpoint fallback) are printed, not logged."""
  if not any(a.startswith(('--verbosity', '-v=')) for a in argv):
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
    kwargs = {}
    for key, env in (('num_processes', 'JAX_NUM_PROCESSES'), ('process_id', 'JAX_PROCESS_ID')):
      if os.environ.get(env):
        try:
          kwargs[key] = int(os.environ[env])
        except ValueError:
          raise ValueError(f'{env}={os.environ[env]!r} is not an integer.') from None
    # Must run before any backend starts: importing jax (at the top) starts none, the first
    # device query does (import train leaves xla_bridge._backends empty).
    jax.distributed.initialize(**kwargs)


def fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(2)


def warn(message: str) -> None:
  """A warning line on stderr (stdout stays clean for --json)."""
  print(message if message.startswith('warning:') else f'warning: {message}', file=sys.stderr,
        flush=True)


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
  shape = {}
  for part in spec.split(','):
    if '=' not in part:
      raise ValueError(f'--mesh expects axis=size pairs like "data=2,tensor=4", got {spec!r}.')
    k, v = part.split('=', 1)
    shape[k.strip()] = int(v)
  return sharding.make_mesh(shape)

