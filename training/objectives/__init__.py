"""Objectives registered by name: `make_objective(name, model, config) -> loss_fn`.

Every module of this package is imported here, so adding an objective is adding a file with
a `@register('name')` factory (see `ar.py`).
"""

import importlib
import pkgutil

from training.objectives.registry import (Batch, LossFn, Objective, ObjectiveFactory,
                                          make_objective, names, register,
                                          token_cross_entropy)

for _m in pkgutil.iter_modules(__path__):
  if _m.name != 'registry':
    importlib.import_module(f'{__name__}.{_m.name}')

__all__ = ['Batch', 'LossFn', 'Objective', 'ObjectiveFactory', 'make_objective', 'names', 'register',
           'token_cross_entropy']
