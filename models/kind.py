"""What a trained model is, as decoders need to know it: `ModelKind`, written into every
checkpoint by the training objective (or the HF import) and read by decoders.

  kind = ModelKind(attention='bidirectional', mask_id=259, shift=True)   # Dream-style MDLM
  require(kind, ('diffusion',), who="Decoder 'llada'")   # ValueError on a mismatch
  require_heads(kind, ('medusa',), who="Decoder 'medusa'")   # ValueError: no medusa heads

A decoder declares the kind families it accepts (`FAMILIES`); `families(kind)` says which a
kind belongs to. A decoder that drafts with trained heads also declares them (`HEADS`). A causal model that was also trained to fill masks (WeDLM) belongs to both
'autoregressive' and 'diffusion'; an any-subset AR model only to 'any_order'.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

ATTENTION = ('causal', 'bidirectional', 'block_causal')

FAMILIES = {  # name -> what a message says a decoder needs
    'autoregressive': 'an autoregressive (causal) model',
    'diffusion': 'a diffusion model (trained to fill <mask> tokens)',
    'any_order': 'an any-subset AR model (two-stream queries)',
    'insertion': 'an insertion model (scores (gap, token) pairs and a stop signal)',
    'bitlm': 'a BitLM model (causal backbone + bitwise diffusion head, configs/bitlm.py)',
}

HEADS = {  # a trained tree saved beside the model (models.heads) -> the config that trains it
    'medusa': 'configs/spec_heads.py:medusa',
    'mtp': 'configs/spec_heads.py:mtp',
    'kangaroo': 'configs/spec_heads.py:kangaroo',  # the Kangaroo adapter
    'eagle3': 'configs/spec_heads.py:eagle3',  # EAGLE-3 draft layer (models/eagle.py)
    'eagle1': 'configs/spec_heads.py:eagle1',  # EAGLE-1 draft layer
    'unmask_policy': 'configs/unmask_policy.py:TASK',  # a diffusion run's unmasking policy
    'kv_predict': 'configs/kv_predict.py',  # KV Prediction's auxiliary model and predictor
    'chimera': 'configs/spec_heads.py:chimera',  # Chimera's draft (models/chimera.py)
    'ppd': 'configs/ppd.py',  # PPD prompt tokens (models/ppd.py)
    'mask_mtp': 'configs/mask_mtp.py',  # mask embeddings, gated LoRA, sampler (models/mask_mtp.py)
    'ctrldiff': 'configs/ctrldiff.py:TASK',  # CtrlDiff's block-size predictor (models/block_size.py)
    'attribute': 'configs/ctrlguide.py:TASK',  # guidance's attribute classifier (models/attribute.py)
    'hamburger': 'configs/hamburger.py',  # HAMburger's embedder and micro decoder (models/hamburger.py)
    'bitlm': 'configs/bitlm.py:tiny',  # BitLM's bitwise diffusion head (models/bitlm.py)
    'pipo': 'configs/pipo.py:task=TASK',  # PIPO's compressor, MTP and confidence heads (models/pipo.py)
}


@dataclasses.dataclass(frozen=True)
class ModelKind:
  """How a trained model reads its input and what it predicts.

  attention: 'causal' (AR, WeDLM), 'bidirectional' (masked diffusion) or 'block_causal'
    (block diffusion: bidirectional inside blocks of `block_size`, causal across them).
  mask_id: the <mask> token it was trained to fill; -1 if none (an AR model).
  shift: the prediction for position q is read at q-1 (Dream-style AR adaptation).
  block_size: the block length it was trained with (block diffusion, WeDLM); 0 if none.
  any_order: an any-subset AR model, read by two-stream queries (ASSD).
  insertion: an insertion language model (ILM): the logits at a token score inserting each
    vocabulary token in the gap after it, the <eos> logit at position 0 is the stop signal
    (training/objectives/insertion.py); only the 'insertion' decoder reads it.
  heads: the trained trees saved beside the model (e.g. 'medusa', 'mtp', 'kangaroo': see
    `HEADS`), sorted.
  """
  attention: str = 'causal'
  mask_id: int = -1
  shift: bool = False
  block_size: int = 0
  any_order: bool = False
  heads: tuple[str, ...] = ()
  insertion: bool = False

  def __post_init__(self):
    if self.attention not in ATTENTION:
      raise ValueError(f'ModelKind.attention must be one of {ATTENTION}, got '
                       f'{self.attention!r}.')
    object.__setattr__(self, 'heads', tuple(sorted(self.heads)))

  def to_dict(self) -> dict[str, Any]:
    d = {**dataclasses.asdict(self), 'heads': list(self.heads)}
    if not self.insertion:  # kinds without it read as before (older readers know no such key)
      del d['insertion']
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'ModelKind':
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f'Unknown ModelKind fields {unknown}; known: {sorted(known)}.')
    d = dict(d)
    for name, cast in (('mask_id', int), ('shift', bool), ('block_size', int),
                       ('any_order', bool), ('insertion', bool)):
      if name in d:
        d[name] = cast(d[name])
    return cls(**{**d, 'heads': tuple(d.get('heads', ()))})

  def describe(self) -> str:
    """One line, e.g. 'bidirectional, mask 259, shift' or 'causal, heads medusa'."""
    parts = [self.attention + (' any-order' if self.any_order else '')
             + (' insertion' if self.insertion else '')]
    if self.mask_id >= 0:
      parts.append(f'mask {self.mask_id}')
    if self.shift:
      parts.append('shift')
    if self.block_size:
      parts.append(f'blocks of {self.block_size}')
    if self.heads:
      parts.append('heads ' + '/'.join(self.heads))
    return ', '.join(parts)


def families(kind: ModelKind) -> frozenset[str]:
  """The decoder families (`FAMILIES`) that can read a model of this kind."""
  if kind.any_order:
    return frozenset({'any_order'})
  if kind.insertion:
    return frozenset({'insertion'})
  if 'bitlm' in kind.heads:  # its vocabulary head is untrained: only the bit head decodes it
    return frozenset({'bitlm'})
  out = set()
  if kind.attention == 'causal':
    out.add('autoregressive')
  if kind.mask_id >= 0:
    out.add('diffusion')
  return frozenset(out)


def accepts(accepted: Sequence[str], kind: ModelKind) -> bool:
  return bool(families(kind) & set(accepted))


def require(kind: ModelKind, accepted: Sequence[str], who: str, hint: str = '') -> None:
  """ValueError (one line, naming `who`, the families it accepts and the kind found) unless
  `kind` belongs to one of `accepted`."""
  unknown = sorted(set(accepted) - set(FAMILIES))
  if unknown:
    raise ValueError(f'{who}: unknown model families {unknown}; known: {sorted(FAMILIES)}.')
  if not accepts(accepted, kind):
    if kind.insertion and not hint:
      hint = "decode it with 'insertion'"
    needs = ' or '.join(FAMILIES[a] for a in accepted)
    raise ValueError(f'{who} needs {needs}; this model is {kind.describe()} '
                     f'(ModelKind families: {sorted(families(kind)) or "none"})'
                     + (f'; {hint}' if hint else '') + '.')


def train_heads_hint(heads: Sequence[str]) -> str:
  """How a run gets `heads` (keys of `HEADS`), for the end of an error message."""
  commands = ' and '.join(f'`python train.py --config={HEADS[h]} --workdir=RUN`' for h in heads)
  return (f'train them with {commands} and sample with `--workdir=RUN` (the run holds the '
          'target and its heads)')


def require_heads(kind: ModelKind, heads: Sequence[str], who: str) -> None:
  """ValueError (one line, naming `who`, the heads missing, the kind found and how to train
  them) unless the run holds every head of `heads` (`ModelKind.heads`)."""
  unknown = sorted(set(heads) - set(HEADS))
  if unknown:
    raise ValueError(f'{who}: unknown heads {unknown}; known: {sorted(HEADS)}.')
  missing = [h for h in heads if h not in kind.heads]
  if missing:
    raise ValueError(f'{who} needs {"/".join(missing)} heads in the target run (this model is '
                     f'{kind.describe()}): {train_heads_hint(missing)}.')
