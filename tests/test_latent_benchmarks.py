"""The latent benchmarks' accounting: the share of steps a routed row's large model touched."""

from __future__ import annotations

from types import SimpleNamespace

from benchmarks import latent

EOS = 2
THINK_END = 262  # </think>, a step end for the routing decoders


def _row(tokens, large):
  return SimpleNamespace(tokens=tokens, extra={'large_mask': large + [0] * 8})


def test_touched_steps_counts_a_step_once_whatever_share_of_it_the_large_model_wrote():
  dot = ord('.')
  # steps: '8.' | '9.' | '</think>' | '7' eos  (4 steps); the large model wrote the second
  # step's digit only and the whole last step: two steps touched
  a = _row([ord('8'), dot, ord('9'), dot, THINK_END, ord('7'), EOS],
           [0, 0, 1, 0, 0, 1, 1])
  # one step ('5' eos) written by the small model; tokens after eos are not a step
  b = _row([ord('5'), EOS, ord('5'), dot], [0, 0, 1, 1])
  assert latent._touched_steps([a], EOS) == 2 / 4  # pylint: disable=protected-access
  assert latent._touched_steps([b], EOS) == 0.0  # pylint: disable=protected-access
  assert latent._touched_steps([a, b], EOS) == 2 / 5  # pylint: disable=protected-access
