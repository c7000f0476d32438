"""A run's workdir: checked before anything is written, and held by one process at a time.

  workdir = workdir_lib.prepare(path)        # ValueError if it is a file or lies under one
  with workdir_lib.lock(workdir):            # WorkdirInUseError naming the holder
    ...

The lock is an exclusive `flock` on `<workdir>/lock`, which also records who holds it. The
kernel releases a flock when its process ends in any way (kill -9 included), so a lock left
by a dead run never blocks a resume: only a live holder does. Only process 0 of a
multi-process job takes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys
import time
from typing import Iterator

import jax

LOCK_FILE = 'lock'


class WorkdirInUseError(RuntimeError):
  """Another live process holds the workdir."""


def prepare(workdir: str) -> str:
  """The absolute path of `workdir`, created if needed; a clear ValueError when it cannot be
  a directory (it is a file, lies under a file, or cannot be created)."""
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f'--workdir={workdir} is a file, not a directory.')
  parent = workdir
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if parent and not os.path.isdir(parent):
    raise ValueError(f'--workdir={workdir} lies under {parent}, which is a file.')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ValueError(f'--workdir={workdir} cannot be created: {e.strerror or e}.') from None
  return workdir


def _holder_description() -> str:
  return (f'pid {os.getpid()} on {socket.gethostname()}, started '
          f'{time.strftime("%Y-%m-%d %H:%M:%S")}: {" ".join(sys.argv) or "python"}')


@contextlib.contextmanager
def lock(workdir: str, purpose: str = 'train') -> Iterator[None]:
  """Holds `workdir` exclusively for the duration of the block.

  Raises:
    WorkdirInUseError: naming the live process that holds it.
  """
  if jax.process_index() != 0:
    yield
    return
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      locked = True
    except OSError as e:
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        with open(path, errors='replace') as f:
          holder = f.read().strip() or 'holder unknown'
        raise WorkdirInUseError(
            f'{workdir} is in use by another run ({holder}). Wait for it to end or use '
            'another --workdir.') from None
      # A filesystem without locks: run unguarded rather than not at all, and say so.
      print(f'warning: cannot lock {path} ({e.strerror}); make sure no other run uses this '
            'workdir.', file=sys.stderr, flush=True)
      locked = False
    if locked:
      os.ftruncate(fd, 0)
      os.write(fd, f'{purpose}: {_holder_description()}\n'.encode())
      os.fsync(fd)
    yield
  finally:
    os.close(fd)  # releases the flock
