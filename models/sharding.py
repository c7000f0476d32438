"""Meshes and logical-axis rules: logical names on parameters/activations -> NamedShardings.

Mesh axes are ('data', 'fsdp', 'tensor'). A logical axis maps to zero, one or several mesh
axes by the rules; a dimension that the mapped mesh axes do not divide is replicated instead
(with a log line), so any preset runs on any mesh. A mesh axis is used at most once per array.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')

# (logical axis, mesh axis or axes). Batch over data and fsdp; weights' model dim over fsdp
# (ZeRO-3 style); heads, kv heads, MLP and vocabulary over tensor.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ('batch', ('data', 'fsdp')),
    ('embed', 'fsdp'),
    ('vocab', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('mlp', 'tensor'),
    ('head_dim', None),
    ('cache_seq', None),
    ('length', None),
)

Rules = Sequence[tuple[str, Any]]


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with axes ('data', 'fsdp', 'tensor') and Auto axis types.

  `shape` gives each axis' size; one axis may be -1 (= all remaining devices). Missing axes
  have size 1. Raises ValueError when the sizes do not match the devices.
  """
  devices = list(devices if devices is not None else jax.devices())
  unknown = sorted(set(shape) - set(MESH_AXES))
  if unknown:
    raise ValueError(f'Unknown mesh axes {unknown}; the mesh axes are {MESH_AXES}.')
  sizes = [int(shape.get(name, 1)) for name in MESH_AXES]
  if sum(s == -1 for s in sizes) > 1:
    raise ValueError(f'At most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}.')
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'Mesh axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}.')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f'Mesh {dict(zip(MESH_AXES, sizes))} does not fit {len(devices)} '
                       f'devices: {len(devices)} is not divisible by {known}.')
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f'Mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but '
                     f'{len(devices)} are available ({devices[0].platform}). Set the sizes so '
                     'their product equals the device count, or use -1 for one axis.')
  device_array = np.asarray(devices).reshape(sizes)
  return Mesh(device_array, MESH_AXES,
              axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(logical: P, shape: Sequence[int], mesh: Mesh, rules: Rules) -> P:
  """Maps a PartitionSpec of logical names to one of mesh axes, dropping what cannot divide."""
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name, dim in zip(tuple(logical) + (None,) * (len(shape) - len(logical)), shape):
    target = table.get(name) if name is not None else None
    axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
    axes = tuple(a for a in axes if a not in used and mesh.shape.get(a, 1) > 1)
    size = math.prod(mesh.shape[a] for a in axes)
    while axes and dim % size:
      logging.info('Replicating dim %s (size %d) over %s: not divisible.', name, dim, axes[-1])
      axes = axes[:-1]
      size = math.prod(mesh.shape[a] for a in axes)
    used.update(axes)
    out.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
  return P(*out)


def tree_shardings(logical_tree: Any, shapes_tree: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES
                   ) -> Any:
  """NamedShardings for a tree, from its logical PartitionSpecs and its shapes."""
  is_spec = lambda x: isinstance(x, P)
  return jax.tree.map(
      lambda spec, x: NamedSharding(mesh, logical_to_spec(spec, np.shape(x), mesh, rules)),
      logical_tree, shapes_tree, is_leaf=is_spec)


def batch_sharding(mesh: Mesh, ndim: int, rules: Rules = DEFAULT_RULES) -> NamedSharding:
  """Sharding of a [B, ...] batch: B over the 'batch' rule's mesh axes, the rest replicated."""
  axes = dict(rules).get('batch')
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  axes = tuple(a for a in axes if mesh.shape.get(a, 1) > 1)
  first = None if not axes else (axes[0] if len(axes) == 1 else axes)
  return NamedSharding(mesh, P(first, *([None] * (ndim - 1))))


def batch_divisor(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> int:
  """How many ways the batch is split (the batch must be divisible by it)."""
  axes = dict(rules).get('batch')
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return math.prod(mesh.shape.get(a, 1) for a in axes)


def check_batch(batch_size: int, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> None:
  """Raises a clear ValueError when the batch does not split over the batch axes."""
  n = batch_divisor(mesh, rules)
  if batch_size % n:
    raise ValueError(f'Batch size {batch_size} is not divisible by the data-parallel mesh size '
                     f'{n} (mesh {dict(mesh.shape)}); use a multiple of {n}.')
