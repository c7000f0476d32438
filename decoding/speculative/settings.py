"""The checks every speculative decoder's settings pass when it is built (clear errors)."""

from __future__ import annotations

import dataclasses
from typing import Any

TREES = ('chain', 'static', 'dynamic')
VERIFIERS = ('auto', 'deterministic', 'iid', 'wor', 'kseq', 'traversal', 'typical')
DRAFT_LOOPS = ('auto', 'while', 'fixed', 'unroll')  # drafter.draft_loop
# Settings that count something and must be >= 1.
POSITIVE = ('gamma', 'top_k', 'tree_nodes', 'ngram', 'recycle_k', 'window', 'pool', 'block',
            'blocks')
# Settings that count something and may be 0.
NON_NEGATIVE = ('recycle', 'draft_vocab', 'lookahead')
# Verification rules that read the draft's distribution q.
NEED_Q = ('iid', 'wor', 'kseq', 'traversal')


def check_draft_loop(kind: str) -> None:
  """ValueError unless `kind` is one of DRAFT_LOOPS (decoders at build, drafters at use)."""
  if kind not in DRAFT_LOOPS:
    raise ValueError(f'Unknown draft_loop {kind!r}; choose one of {DRAFT_LOOPS}.')


def check(decoder: Any, composed: Any) -> None:
  """Raises ValueError for settings of `decoder` that cannot work; `composed` is the decoder
  whose drafter settings are used (itself but for `speculative:drafter=`)."""
  verifier = decoder.verifier
  if verifier not in VERIFIERS:
    raise ValueError(f'Unknown verifier {verifier!r}; choose one of {VERIFIERS}.')
  for f in dataclasses.fields(decoder):
    if f.name in POSITIVE and getattr(decoder, f.name) < 1:
      raise ValueError(f'{f.name} must be >= 1, got {getattr(decoder, f.name)}.')
    if f.name in NON_NEGATIVE and getattr(decoder, f.name) < 0:
      raise ValueError(f'{f.name} must be >= 0, got {getattr(decoder, f.name)}.')
  stop_below = getattr(decoder, 'stop_below', 0.0)
  if not 0.0 <= stop_below < 1.0:
    raise ValueError(f'stop_below must be in [0, 1), got {stop_below}.')
  check_draft_loop(getattr(decoder, 'draft_loop', 'auto'))
  tree = getattr(decoder, 'tree', 'chain')
  if tree not in TREES:
    raise ValueError(f'Unknown tree {tree!r}; choose one of {TREES}.')
  if getattr(decoder, 'delay', 0) and tree != 'static':
    raise ValueError(f'delay={decoder.delay} (delayed tree expansion) needs tree=static.')
  if not composed.drafter_type.has_q and verifier in NEED_Q:
    raise ValueError(f'The {composed.drafter_name()!r} drafter proposes tokens without a '
                     f"distribution q; verifier={verifier!r} needs one. Use 'auto' or "
                     "'deterministic'.")
  if verifier == 'typical' and not (0.0 < decoder.typical_epsilon <= 1.0
                                    and decoder.typical_alpha > 0.0):
    raise ValueError('verifier=typical needs 0 < typical_epsilon <= 1 and typical_alpha > 0, '
                     f'got {decoder.typical_epsilon} and {decoder.typical_alpha}.')
  if verifier == 'traversal' and getattr(composed, 'tree', 'chain') == 'dynamic':
    raise ValueError("verifier='traversal' needs children drawn i.i.d. from q; dynamic trees "
                     "take top-k children. Use tree='static' or 'chain'.")
