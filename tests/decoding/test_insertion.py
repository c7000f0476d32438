"""The insertion decoder (ILM) with an oracle model: a stand-in whose logits put all the mass on
a right (gap, token) of a known target and whose stop signal fires once nothing is missing.

  greedy decoding rebuilds every row of a ragged batch exactly, inserting in the middle of
  gaps (not left to right), with one forward per token plus the stop step;
  the stop signal ends decoding (early when the oracle stops early), the cap otherwise;
  infilling inside the prompt (insert_from) fills a span of unknown length in place;
  sampling from the oracle's one-hot joint gives the same rows;
  other decoders refuse an insertion model and the insertion decoder refuses others.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decoding import base, registry, runner
from decoding import sampling as sampling_lib
from decoding.diffusion import insertion as ins_lib
from models import config as config_lib
from models.kind import ModelKind

V, EOS, PAD, BIG = 48, 47, 46, 30.0


@dataclasses.dataclass
class _Out:
  logits_BxTxV: jax.Array


@dataclasses.dataclass(frozen=True)
class OracleInserter:
  """Knows each row's target (distinct tokens, -1 padded) [R, M]; a row is identified by its
  first prompt token (row r's target starts with token r). For the current sequence (a
  subsequence of the target) it scores, in the gap with the most missing tokens (ties: the
  first), the middle missing token; stop fires when the sequence is the target's first
  `stop_at` tokens' subsequence of full length (stop_at = -1: the whole target)."""
  targets: tuple[tuple[int, ...], ...]
  stop_at: int = -1
  cfg: Any = config_lib.ModelConfig(vocab_size=V, d_model=8, num_layers=1, num_heads=1,
                                    num_kv_heads=1, head_dim=8, mlp_dim=8)

  def apply(self, variables, tokens_BxL, positions_BxL, attn_mask=None):
    del variables
    assert attn_mask == 'bidirectional'
    tgt = jnp.asarray(self.targets, jnp.int32)  # [R, M]
    B, L = tokens_BxL.shape
    M = tgt.shape[1]
    row_tgt = tgt[tokens_BxL[:, 0]]  # [B, M]
    m_B = (row_tgt >= 0).sum(1)
    # Index in the target of each token of the sequence (tokens are distinct).
    where = (tokens_BxL[:, :, None] == row_tgt[:, None, :]) & (positions_BxL >= 0)[:, :, None]
    idx_BxL = jnp.argmax(where, -1)
    length_B = (positions_BxL >= 0).sum(1)
    nxt = jnp.concatenate([idx_BxL[:, 1:], jnp.full((B, 1), M)], 1)
    nxt = jnp.where(jnp.arange(L)[None] + 1 < length_B[:, None], nxt, m_B[:, None])
    missing = jnp.where(positions_BxL >= 0, nxt - idx_BxL - 1, -1)
    gap = jnp.argmax(missing, 1)
    g_idx, g_nxt = idx_BxL[jnp.arange(B), gap], nxt[jnp.arange(B), gap]
    tok = row_tgt[jnp.arange(B), (g_idx + g_nxt) // 2]
    logits = jnp.zeros((B, L, V)).at[jnp.arange(B), gap, tok].set(BIG)
    goal = m_B if self.stop_at < 0 else jnp.minimum(m_B, self.stop_at)
    done = length_B >= goal
    return _Out(logits.at[:, 0, EOS].set(jnp.where(done, BIG, -BIG)))


def targets_and_prompts(rng, rows, plens, lens):
  targets, prompts = [], []
  M = max(lens)
  for r, (p, m) in enumerate(zip(plens, lens)):
    rest = rng.permutation([t for t in range(rows, 40)])[:m - 1].tolist()
    t = [r] + rest  # token r first: the oracle's row id
    targets.append(tuple(t + [-1] * (M - m)))
    prompts.append(t[:p])
  return tuple(targets), prompts


def run(decoder, model, prompts, N):
  rows, _ = runner.run_decoder(decoder, base.Models(model), {'target': {}}, prompts,
                               max_new_tokens=N, cache_size=64, eos_id=EOS, pad_id=PAD)
  return rows


def test_oracle_greedy_rebuilds_a_ragged_batch_inserting_mid_gap():
  rng = np.random.default_rng(0)
  plens, lens = [1, 3, 2, 5], [9, 12, 2, 14]
  targets, prompts = targets_and_prompts(rng, 4, plens, lens)
  model = OracleInserter(targets)
  rows = run(ins_lib.InsertionDecoder(), model, prompts, N=16)
  for r, row in enumerate(rows):
    want = [t for t in targets[r] if t >= 0]
    new = lens[r] - plens[r]
    assert row.tokens == want[plens[r]:] + [EOS], r
    assert row.extra['sequence'][:row.extra['length']] == want
    assert row.extra['stopped'] == 1
    assert row.target_forwards == new + 1  # one per insertion, one that stops
    assert row.step_tokens_hist == [1, new]
  # Middle-of-gap insertion: the oracle's order is not left to right.
  alone = run(ins_lib.InsertionDecoder(), model, [prompts[3]], N=16)[0]
  assert alone.tokens == rows[3].tokens and alone.target_forwards == rows[3].target_forwards


def test_stop_signal_ends_decoding_and_the_cap_ends_it_otherwise():
  rng = np.random.default_rng(1)
  targets, prompts = targets_and_prompts(rng, 2, [2, 2], [12, 12])
  early = run(ins_lib.InsertionDecoder(), OracleInserter(targets, stop_at=6), prompts, N=16)
  for row in early:  # stops after 4 insertions although tokens are still missing
    assert len(row.tokens) == 5 and row.tokens[-1] == EOS and row.target_forwards == 5
    assert row.extra['stopped'] == 1
  capped = run(ins_lib.InsertionDecoder(), OracleInserter(targets), prompts, N=4)
  for row in capped:  # the cap: 4 insertions, no stop step, no <eos>
    assert len(row.tokens) == 4 and EOS not in row.tokens and row.target_forwards == 4
    assert row.extra['stopped'] == 0
  never = run(ins_lib.InsertionDecoder(stop_threshold=1.0), OracleInserter(targets), prompts,
              N=16)
  for row in never:  # stop_threshold=1: decode to the cap (the oracle then repeats a token)
    assert row.target_forwards == 16 and row.extra['stopped'] == 0


def test_infilling_inside_the_prompt_of_unknown_length():
  rng = np.random.default_rng(2)
  targets, _ = targets_and_prompts(rng, 3, [1, 1, 1], [10, 13, 8])
  cuts = [(3, 5), (4, 9), (2, 3)]  # remove target[a:b] from the middle
  prompts = [[t for t in targets[r][:a]] + [t for t in targets[r][b:] if t >= 0]
             for r, (a, b) in enumerate(cuts)]
  rows = run(ins_lib.InsertionDecoder(insert_from=0), OracleInserter(targets), prompts, N=8)
  for r, row in enumerate(rows):
    a, b = cuts[r]
    want = [t for t in targets[r] if t >= 0]
    assert row.extra['sequence'][:row.extra['length']] == want
    assert row.tokens == list(targets[r][a:b]) + [EOS]
    assert row.target_forwards == (b - a) + 1
  # Without insert_from the prompt's gaps are closed: the oracle's mass is elsewhere, the
  # decoder inserts after the prompt only.
  after = run(ins_lib.InsertionDecoder(), OracleInserter(targets), prompts, N=8)
  for r, row in enumerate(after):
    seq = row.extra['sequence'][:row.extra['length']]
    assert seq[:len(prompts[r])] == prompts[r]


def test_sampling_a_one_hot_joint_gives_the_greedy_rows():
  rng = np.random.default_rng(3)
  targets, prompts = targets_and_prompts(rng, 3, [1, 2, 4], [7, 9, 11])
  model = OracleInserter(targets)
  greedy = run(ins_lib.InsertionDecoder(), model, prompts, N=12)
  sampled = run(ins_lib.InsertionDecoder(sampling=sampling_lib.SamplingConfig(temperature=1.0)),
                model, prompts, N=12)
  assert [r.tokens for r in sampled] == [r.tokens for r in greedy]


def test_insert_at_shifts_later_entries():
  seq = jnp.asarray([[1, 2, 3, 4, 0], [5, 6, 7, 0, 0]])
  out = ins_lib.insert_at(seq, jnp.asarray([1, 2]), jnp.asarray([9, 8]), jnp.asarray([True, False]))
  assert out.tolist() == [[1, 2, 9, 3, 4], [5, 6, 7, 0, 0]]


def test_kinds_and_bad_settings_are_refused():
  kind = ModelKind(attention='bidirectional', insertion=True)
  with pytest.raises(ValueError, match="decode it with 'insertion'"):
    registry.build('llada').for_model({'target': kind})
  with pytest.raises(ValueError, match="decode it with 'insertion'"):
    registry.build('ar').for_model({'target': kind})
  with pytest.raises(ValueError, match='insertion model'):
    registry.build('insertion').for_model({'target': ModelKind()})
  with pytest.raises(ValueError, match='insertion model'):
    registry.build('insertion').for_model({'target': ModelKind('bidirectional', mask_id=3)})
  assert registry.build('insertion').for_model({'target': kind}) == ins_lib.InsertionDecoder()
  assert ModelKind.from_dict(kind.to_dict()) == kind
  assert 'insertion' not in ModelKind().to_dict()  # other kinds' checkpoints are unchanged
  model = OracleInserter(((0, 1, 2),))
  for bad, match in ((dict(stop_threshold=0.0), 'stop_threshold'),
                     (dict(insert_from=-2), 'insert_from'),
                     (dict(insert_from=40), 'beyond the prompts')):
    with pytest.raises(ValueError, match=match):
      run(ins_lib.InsertionDecoder(**bad), model, [[0]], N=4)
  with pytest.raises(ValueError, match='eos_id'):
    runner.run_decoder(ins_lib.InsertionDecoder(), base.Models(model), {'target': {}}, [[0]],
                       max_new_tokens=4, cache_size=64, eos_id=V, pad_id=PAD)
