"""benchmarks/step_ops.py: the operations and bytes of one decode step, counted in the
compiled program (the decode loop and its inner loops, calls and conditionals, in-place
updates, slices, library scratch, asynchronous wrappers, a weight copied in the loop)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testlib import small_config
from benchmarks import step_ops
from decoding import Models
from models import Transformer, init_params

V = 64


@pytest.fixture(scope='module')
def target():
  model = Transformer(small_config(vocab_size=V, init_std=0.3))
  return model, init_params(model, jax.random.key(3))


def test_step_ops_counts_the_decode_loop_and_inner_loops_by_their_trip_counts(target):
  """The decode loop is found (AR: one loop; a chain that drafts in a fixed-count loop: that
  loop inside it, counted times its trip count, gamma - 1; in a while loop: once, inexact),
  and a step that drafts and verifies executes more operations than an AR step."""
  model, params = target
  kw = dict(batch=2, prompt_len=8, max_new=16, cache_size=128)
  count = lambda spec: step_ops.count_decoder(step_ops.build(spec)[0], Models(model),
                                              {'target': params}, **kw)
  ar = count('ar')
  assert ar.trips is None and not ar.inner and ar.exact and ar.ops == ar.own > 20
  fixed = count('speculative:gamma=3:draft_loop=fixed')
  (inner,) = fixed.inner
  assert inner.trips == 2 and fixed.exact
  assert fixed.ops == fixed.own + 2 * inner.ops > ar.ops
  for loop in (ar, fixed):  # every op in exactly one part (which part: the next test)
    assert sum(loop.parts.values()) == loop.ops and loop.parts['model'] > 0
  assert ar.parts.get('draft modules', 0) == 0
  unrolled = count('speculative:gamma=3:draft_loop=unroll')
  assert not unrolled.inner and unrolled.ops < fixed.ops
  looped = count('speculative:gamma=3:draft_loop=while')
  assert [l.trips for l in looped.inner] == [None] and not looped.exact
  hlo = 'ENTRY %main () -> s32[] {\n  %a = s32[] constant(1)\n  ROOT %b = s32[] add(%a, %a)\n}'
  with pytest.raises(ValueError, match='No data-dependent while loop'):
    step_ops.step_loop(hlo)


def test_step_ops_counts_what_calls_and_conditionals_run():
  """A call counts the operations of the computation it calls (a GPU command buffer's
  kernels) and a conditional its larger branch, each plus the instruction itself."""
  hlo = '\n'.join([
      '%small (p: f32[]) -> f32[] {', '  %p = f32[] parameter(0)',
      '  ROOT %n = f32[] negate(%p)', '}',
      '%big (q: f32[]) -> f32[] {', '  %q = f32[] parameter(0)', '  %a = f32[] exponential(%q), metadata={op_name="jit(f)/while/body/EagleDraft/exp"}',
      '  ROOT %b = f32[] negate(%a)', '}',
      '%body (c: (s32[], f32[])) -> (s32[], f32[]) {', '  %c = (s32[], f32[]) parameter(0)',
      '  %i = s32[] get-tuple-element(%c), index=0', '  %x = f32[] get-tuple-element(%c), index=1',
      '  %one = s32[] constant(1)',
      '  %j = s32[] add(%i, %one), metadata={op_name="jit(f)/while/body/add"}',
      '  %y = f32[] call(%x), to_apply=%big, metadata={op_name="jit(f)/Transformer/mlp"}',
      '  %z = f32[] conditional(%i, %y, %y), branch_computations={%small, %big}',
      '  ROOT %t = (s32[], f32[]) tuple(%j, %z)', '}',
      '%cond (d: (s32[], f32[])) -> pred[] {', '  %d = (s32[], f32[]) parameter(0)',
      '  %k = s32[] get-tuple-element(%d), index=0', '  %ten = s32[] constant(10)',
      '  ROOT %lt = pred[] compare(%k, %ten), direction=LT', '}',
      'ENTRY %main (e: (s32[], f32[])) -> (s32[], f32[]) {',
      '  %e = (s32[], f32[]) parameter(0)',
      '  ROOT %w = (s32[], f32[]) while(%e), condition=%cond, body=%body', '}'])
  loop = step_ops.step_loop(hlo)
  # body: add 1, call 1 + 2, conditional 1 + 2; condition: compare 1
  assert loop.trips is None and loop.ops == 1 + 3 + 3 + 1
  # by name: add -> loop; the call -> model, its exp -> a draft module, its negate and the
  # rest -> unnamed (the conditional counts its larger branch, %big, with the same names)
  assert loop.parts == {'loop': 1, 'model': 1, 'draft modules': 2, 'unnamed': 4}


def test_step_ops_bytes_count_in_place_updates_slices_and_library_results_by_what_moves():
  """An in-place update (a fusion whose root updates a parameter) counts its update, not the
  buffer; an operand a fusion only slices counts the slice; a library call's scratch result
  does not count; a plain op counts operands and result; a loop body counts per iteration."""
  hlo = '\n'.join([
      '%upd (a: f32[1000], u: f32[10], i: s32[]) -> f32[1000] {',
      '  %a = f32[1000]{0} parameter(0)', '  %u = f32[10]{0} parameter(1)',
      '  %i = s32[] parameter(2)',
      '  ROOT %d = f32[1000]{0} dynamic-update-slice(%a, %u, %i)', '}',
      '%take (b: f32[1000], j: s32[]) -> f32[20] {',
      '  %b = f32[1000]{0} parameter(0)', '  %j = s32[] parameter(1)',
      '  %s = f32[20]{0} dynamic-slice(%b, %j), dynamic_slice_sizes={20}',
      '  ROOT %n = f32[20]{0} negate(%s)', '}',
      '%body (c: (s32[], f32[1000], bf16[64,64])) -> (s32[], f32[1000], bf16[64,64]) {',
      '  %c = (s32[], f32[1000], bf16[64,64]) parameter(0)',
      '  %k = s32[] get-tuple-element(%c), index=0',
      '  %buf = f32[1000]{0} get-tuple-element(%c), index=1',
      '  %w = bf16[64,64]{1,0} get-tuple-element(%c), index=2',
      '  %sl = f32[20]{0} fusion(%buf, %k), kind=kLoop, calls=%take',
      '  %up = f32[10]{0} slice(%sl), slice={[0:10]}',
      '  %new = f32[1000]{0} fusion(%buf, %up, %k), kind=kLoop, calls=%upd',
      '  %g = (bf16[2,64]{1,0}, s8[4096]{0}) custom-call(%w, %w), '
      'custom_call_target="__cublas$gemm"',
      '  %one = s32[] constant(1)', '  %k2 = s32[] add(%k, %one)',
      '  ROOT %t = (s32[], f32[1000], bf16[64,64]) tuple(%k2, %new, %w)', '}',
      '%cond (d: (s32[], f32[1000], bf16[64,64])) -> pred[] {',
      '  %d = (s32[], f32[1000], bf16[64,64]) parameter(0)',
      '  %e = s32[] get-tuple-element(%d), index=0', '  %ten = s32[] constant(10)',
      '  ROOT %lt = pred[] compare(%e, %ten), direction=LT', '}',
      'ENTRY %main (x: (s32[], f32[1000], bf16[64,64])) -> (s32[], f32[1000], bf16[64,64]) {',
      '  %x = (s32[], f32[1000], bf16[64,64]) parameter(0)',
      '  ROOT %wl = (s32[], f32[1000], bf16[64,64]) while(%x), condition=%cond, body=%body',
      '}'])
  loop = step_ops.step_loop(hlo)
  take = 20 * 4 + 4 + 20 * 4  # the slice it reads, the index, its result
  up = 2 * 10 * 4  # slice: reads and writes 10 floats (its operand counts what it takes)
  upd = 10 * 4 + 4  # the update and the index; the buffer and result not at all
  gemm = 2 * 64 * 64 * 2 + 2 * 64 * 2  # both operands, the first result only
  add, compare = 3 * 4, 2 * 4 + 1
  assert loop.bytes == take + up + upd + gemm + add + compare
  kinds = step_ops.by_kind(loop)  # what the step's operations are, and what each kind moves
  assert kinds['fusion (kLoop)'] == [2, take + upd]
  assert kinds['custom-call __cublas$gemm'] == [1, gemm] and kinds['slice'] == [1, up]
  assert step_ops.shape_bytes('(f32[2,3]{1,0}, bf16[4], pred[], f8e4m3fn[8], token[])') \
      == 24 + 8 + 1 + 8
  # an asynchronous wrapper counts what its computation runs; its -done nothing
  comps = {'wrapped': ['  %p = f32[100]{0} parameter(0)',
                       '  ROOT %e = f32[100]{0} exponential(%p)']}
  start = step_ops.Instr.parse('  %s = ((f32[100]), f32[100], s32[]) async-start(%x), '
                               'calls=%wrapped')
  done = step_ops.Instr.parse('  %d = f32[100]{0} async-done(%s), calls=%wrapped')
  shapes = {'x': 'f32[100]{0}', 's': '((f32[100]), f32[100], s32[])'}
  assert step_ops.op_bytes(comps, shapes, start) == 800
  assert step_ops.op_bytes(comps, shapes, done) == 0


def test_step_ops_bytes_see_a_weight_copied_every_step_and_stacked_project_avoids_it():
  """In a while loop, einsum('BTE,KEN->BTKN') over a stacked weight copies the weight into
  another order every iteration on XLA:CPU (about a read and a write of it more per step
  than the batched product of `layers.stacked_project`); both give the same values, and an
  AR step on a small model moves at least its weights and at most a few times them."""
  from models import layers
  K, E, N = 4, 64, 96
  w = jax.random.normal(jax.random.key(0), (K, E, N))
  x = jax.random.normal(jax.random.key(1), (1, 1, E))

  def loop_bytes(project):
    def f(w, x, n):  # n traced: a data-dependent loop, as a decode loop is
      body = lambda c: (c[0] + 1, c[1] + project(x + c[1][:, :, 0, :E], w))
      return jax.lax.while_loop(lambda c: c[0] < n, body, (0, jnp.zeros((1, 1, K, N))))[1]
    hlo = jax.jit(f).lower(w, x, 5).compile().as_text()
    return step_ops.step_loop(hlo).bytes, f(w, x, 5)

  plain, y_plain = loop_bytes(lambda x, w: jnp.einsum('BTE,KEN->BTKN', x, w))
  stacked, y_stacked = loop_bytes(layers.stacked_project)
  np.testing.assert_allclose(np.asarray(y_stacked), np.asarray(y_plain), rtol=1e-5, atol=1e-5)
  assert plain - stacked >= 1.9 * w.size * 4  # a read and a write of w, less the batched
  # product's own small extras (x broadcast over K, the result's moved axis)

  model = Transformer(small_config(vocab_size=V))
  params = init_params(model, jax.random.key(0))
  ar = step_ops.count_decoder(step_ops.build('ar')[0], Models(model), {'target': params},
                              batch=1, prompt_len=8, max_new=16, cache_size=128)
  weights, kv = step_ops.floor_bytes(model, params, 1, 128)
  assert weights <= ar.bytes <= 3 * (weights + kv)


def test_a_reduced_draft_vocabulary_reads_fewer_head_rows_per_draft_call(tmp_path, monkeypatch):
  """EAGLE-3 over 1024 of 4096 tokens: each of a chain's 3 draft calls reads 3072 head rows
  fewer (`--draft_vocabs`), and the rows of each run are labelled."""
  model = Transformer(small_config(vocab_size=4096))
  params = init_params(model, jax.random.key(0))
  kw = dict(batch=1, prompt_len=8, max_new=16, cache_size=128)
  decoder, label = step_ops.build('eagle3:tree=chain:gamma=3')
  full, reduced = (step_ops.count_decoder(decoder, Models(model), {'target': params}, **kw,
                                          draft_vocab=v) for v in (0, 1024))
  D = model.cfg.d_model
  assert full.bytes - reduced.bytes >= 0.95 * 3 * (4096 - 1024) * D * 4
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  args = type('Args', (), dict(preset='test', dtype='float32', decoders='ar,eagle3:tree=chain',
                               draft_vocabs='0,64', batch=1, prompt_len=8, max_new_tokens=16,
                               model='', top=2, out='', dump_hlo=''))
  path, rows = step_ops.run(args)
  assert [r['decoder'] for r in rows] == [
      'ar', 'eagle3(tree=chain)', 'eagle3(tree=chain) (draft vocabulary 64)']
  assert rows[2]['bytes'] < rows[1]['bytes'] and path.startswith(str(tmp_path))


def test_a_decode_time_draft_vocabulary_reads_fewer_head_rows_per_draft_token(tmp_path,
                                                                             monkeypatch):
  """LayerSkip with draft_vocab=1024 of 4096 tokens: each of its 3 draft tokens reads 3072
  head rows fewer (the verification forward reads the whole head as before), and
  `--draft_vocabs` gives the early exit one row per size, labelled by its setting."""
  model = Transformer(small_config(vocab_size=4096, num_layers=4, d_model=128))
  params = init_params(model, jax.random.key(0))
  kw = dict(batch=1, prompt_len=8, max_new=16, cache_size=128)
  full, reduced = (step_ops.count_decoder(step_ops.build(spec)[0], Models(model),
                                          {'target': params}, **kw)
                   for spec in ('layerskip:gamma=3', 'layerskip:gamma=3:draft_vocab=1024'))
  rows_bytes = 3 * (4096 - 1024) * model.cfg.d_model * 4
  # what it adds per draft token: [V] float32 scores spread over the vocabulary (a few V x 4
  # bytes, 2% of the rows it no longer reads at D = 128)
  assert 0.9 * rows_bytes <= full.bytes - reduced.bytes <= 1.02 * rows_bytes, (
      (full.bytes - reduced.bytes) / rows_bytes)
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(common, 'RESULTS_DIR', str(tmp_path))
  args = type('Args', (), dict(preset='test', dtype='float32', decoders='ar,layerskip',
                               draft_vocabs='0,64', batch=1, prompt_len=8, max_new_tokens=16,
                               model='', top=2, out='', dump_hlo=''))
  _, rows = step_ops.run(args)
  assert [r['decoder'] for r in rows] == ['ar', 'layerskip', 'layerskip(draft_vocab=64)']
  assert rows[2]['bytes'] < rows[1]['bytes']
