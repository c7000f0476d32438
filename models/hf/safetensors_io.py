"""Streaming safetensors I/O: read one tensor at a time, write shards tensor by tensor.

The format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length
N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, '__metadata__': {...}},
then the raw little-endian tensor bytes (offsets count from the end of the header). Sharded
checkpoints add `model.safetensors.index.json` with {'weight_map': {name: file}}.

Reading uses plain file reads at the tensor's offset, so only the tensor being converted is
in memory; writing lays out the header from shapes known in advance and then asks a producer
for each tensor in turn. Neither side ever holds a second copy of the model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from typing import Callable, Sequence

import ml_dtypes
import numpy as np

SINGLE_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'

_DTYPES: dict[str, np.dtype] = {
    'F64': np.dtype(np.float64), 'F32': np.dtype(np.float32), 'F16': np.dtype(np.float16),
    'BF16': np.dtype(ml_dtypes.bfloat16), 'I64': np.dtype(np.int64),
    'I32': np.dtype(np.int32), 'I16': np.dtype(np.int16), 'I8': np.dtype(np.int8),
    'U8': np.dtype(np.uint8), 'BOOL': np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
FLOAT_DTYPES = {'float32': _DTYPES['F32'], 'bfloat16': _DTYPES['BF16'],
                'float16': _DTYPES['F16']}


def float_dtype(name: str) -> np.dtype:
  """'float32' | 'bfloat16' | 'float16' -> numpy dtype (bfloat16 via ml_dtypes)."""
  if name not in FLOAT_DTYPES:
    raise ValueError(f'Unknown dtype {name!r}; use one of {sorted(FLOAT_DTYPES)}.')
  return FLOAT_DTYPES[name]


class CheckpointFormatError(ValueError):
  """A Hugging Face checkpoint directory or file that cannot be read."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """Where one tensor lives: file, dtype, shape and absolute byte range."""
  file: str
  dtype: np.dtype
  shape: tuple[int, ...]
  start: int
  end: int


def _read_header(path: str) -> dict[str, TensorInfo]:
  with open(path, 'rb') as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise CheckpointFormatError(f'{path} is not a safetensors file (shorter than 8 bytes).')
    (n,) = struct.unpack('<Q', raw)
    size = os.path.getsize(path)
    if n > size - 8:
      raise CheckpointFormatError(f'{path} is not a safetensors file (header length {n} '
                                  f'exceeds the file size {size}).')
    header = json.loads(f.read(n))
  base = 8 + n
  out = {}
  for name, entry in header.items():
    if name == '__metadata__':
      continue
    if entry['dtype'] not in _DTYPES:
      raise CheckpointFormatError(f'Tensor {name!r} in {path} has dtype {entry["dtype"]}, '
                                  f'which is not supported (have {sorted(_DTYPES)}).')
    begin, end = entry['data_offsets']
    info = TensorInfo(path, _DTYPES[entry['dtype']], tuple(entry['shape']), base + begin,
                      base + end)
    expected = int(np.prod(info.shape, dtype=np.int64)) * info.dtype.itemsize
    if end - begin != expected or base + end > size:
      raise CheckpointFormatError(f'Tensor {name!r} in {path}: byte range {begin}..{end} does '
                                  f'not fit shape {list(info.shape)} of {entry["dtype"]} or '
                                  'the file is truncated.')
    out[name] = info
  return out


class SafetensorsReader:
  """All tensors of a checkpoint directory (single file or sharded index), read lazily.

    reader = SafetensorsReader(hf_dir)
    reader.names()            # every tensor name
    reader.get('model.norm.weight')  # np.ndarray, read from disk now
  """

  def __init__(self, directory: str):
    index = os.path.join(directory, INDEX_FILE)
    single = os.path.join(directory, SINGLE_FILE)
    if os.path.isfile(index):
      with open(index) as f:
        weight_map = json.load(f).get('weight_map')
      if not isinstance(weight_map, dict):
        raise CheckpointFormatError(f'{index} has no "weight_map".')
      files = sorted(set(weight_map.values()))
    elif os.path.isfile(single):
      weight_map, files = None, [SINGLE_FILE]
    else:
      others = sorted(f for f in os.listdir(directory)
                      if f.endswith(('.bin', '.pt', '.pth', '.safetensors')))
      raise CheckpointFormatError(
          f'No {SINGLE_FILE} or {INDEX_FILE} in {directory}'
          + (f' (found {others}; only safetensors are read: re-save with '
             '`model.save_pretrained(dir, safe_serialization=True)`)' if others else '') + '.')
    self._tensors: dict[str, TensorInfo] = {}
    for file in files:
      path = os.path.join(directory, file)
      if not os.path.isfile(path):
        raise CheckpointFormatError(f'{INDEX_FILE} in {directory} names {file}, which is '
                                    'missing.')
      self._tensors.update(_read_header(path))
    if weight_map is not None:
      missing = sorted(set(weight_map) - set(self._tensors))
      if missing:
        raise CheckpointFormatError(f'Tensors listed in {INDEX_FILE} but absent from their '
                                    f'files: {missing[:10]}.')

  def names(self) -> list[str]:
    return sorted(self._tensors)

  def __contains__(self, name: str) -> bool:
    return name in self._tensors

  def info(self, name: str) -> TensorInfo:
    return self._tensors[name]

  def get(self, name: str) -> np.ndarray:
    """Reads tensor `name` from disk (a fresh array; nothing is cached)."""
    info = self._tensors[name]
    count = int(np.prod(info.shape, dtype=np.int64))
    with open(info.file, 'rb') as f:
      f.seek(info.start)
      arr = np.fromfile(f, dtype=info.dtype.newbyteorder('<'), count=count)
    return arr.reshape(info.shape)


@dataclasses.dataclass(frozen=True)
class TensorPlan:
  """A tensor to write: its name, shape, dtype and a function that produces it on demand."""
  name: str
  shape: tuple[int, ...]
  dtype: np.dtype
  produce: Callable[[], np.ndarray]

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def _shards(plans: Sequence[TensorPlan], max_shard_bytes: int) -> list[list[TensorPlan]]:
  shards: list[list[TensorPlan]] = [[]]
  size = 0
  for plan in plans:
    if shards[-1] and size + plan.nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(plan)
    size += plan.nbytes
  return shards


def _write_file(path: str, plans: Sequence[TensorPlan], metadata: dict[str, str]) -> None:
  header: dict[str, object] = {'__metadata__': metadata}
  offset = 0
  for plan in plans:
    if plan.dtype not in _NAMES:
      raise ValueError(f'Cannot write {plan.name} as {plan.dtype}.')
    header[plan.name] = {'dtype': _NAMES[plan.dtype], 'shape': list(plan.shape),
                         'data_offsets': [offset, offset + plan.nbytes]}
    offset += plan.nbytes
  raw = json.dumps(header, separators=(',', ':')).encode()
  raw += b' ' * (-len(raw) % 8)
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(raw)))
    f.write(raw)
    for plan in plans:
      arr = np.ascontiguousarray(plan.produce(), dtype=plan.dtype.newbyteorder('<'))
      if arr.shape != plan.shape:
        raise ValueError(f'{plan.name}: produced shape {arr.shape}, planned {plan.shape}.')
      f.write(arr.tobytes())
      del arr


def write_checkpoint(directory: str, plans: Sequence[TensorPlan], *,
                     max_shard_bytes: int = 5 * 2**30) -> list[str]:
  """Writes `plans` as model.safetensors, or as shards plus an index when they exceed
  `max_shard_bytes`; each tensor is produced just before it is written. Returns the files."""
  os.makedirs(directory, exist_ok=True)
  names = [p.name for p in plans]
  if len(set(names)) != len(names):
    raise ValueError('Duplicate tensor names in the export plan.')
  shards = _shards(plans, max_shard_bytes)
  metadata = {'format': 'pt'}
  if len(shards) == 1:
    _write_file(os.path.join(directory, SINGLE_FILE), shards[0], metadata)
    return [SINGLE_FILE]
  files, weight_map = [], {}
  for i, shard in enumerate(shards):
    file = f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors'
    _write_file(os.path.join(directory, file), shard, metadata)
    files.append(file)
    weight_map.update({p.name: file for p in shard})
  with open(os.path.join(directory, INDEX_FILE), 'w') as f:
    json.dump({'metadata': {'total_size': sum(p.nbytes for p in plans)},
               'weight_map': weight_map}, f, indent=2)
  return files
