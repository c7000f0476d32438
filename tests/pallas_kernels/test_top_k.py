"""`pallas_kernels.common.top_k`: `lax.top_k`'s answer, through XLA:CPU's TopK routine."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import common


def _numpy_top_k(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Highest first, ties to the lowest index (a stable sort of -x)."""
  ids = np.argsort(-x, axis=-1, kind='stable')[..., :k]
  return np.take_along_axis(x, ids, axis=-1), ids


@pytest.mark.parametrize('shape', [(9,), (4, 13), (2, 3, 40), (1, 1, 272)])
def test_top_k_equals_a_stable_sort_with_ties_and_infinities(shape):
  rng = np.random.default_rng(sum(shape))
  x = rng.integers(-3, 3, size=shape).astype(np.float32)  # many equal values
  x[rng.random(shape) < 0.2] = -np.inf
  x[rng.random(shape) < 0.05] = np.inf
  for k in sorted({1, 2, shape[-1] // 2, shape[-1]}):
    values, ids = jax.jit(common.top_k, static_argnums=1)(jnp.asarray(x), k)
    want_values, want_ids = _numpy_top_k(x, k)
    assert ids.dtype == jnp.int32 and ids.shape == shape[:-1] + (k,)
    np.testing.assert_array_equal(values, want_values, err_msg=f'k={k}')
    np.testing.assert_array_equal(ids, want_ids, err_msg=f'k={k}')


def test_top_k_keeps_the_cpu_fast_path_where_lax_top_k_loses_it():
  """In a loop that uses two different slices of the result, `top_k` compiles to XLA:CPU's
  TopK runtime call (not a comparator sort), with `lax.top_k`'s answer."""
  if jax.default_backend() != 'cpu':
    pytest.skip('an XLA:CPU compilation property')

  def loop(fn):
    def run(x):
      def body(_, carry):
        x, acc = carry
        ids = fn(x, 8)[1]
        return x + 1e-3 * ids[..., :1].astype(x.dtype), acc + ids
      return jax.lax.fori_loop(0, 3, body, (x, jnp.zeros(x.shape[:-1] + (8,), jnp.int32)))
    return jax.jit(run)

  x = jax.random.normal(jax.random.key(0), (4, 272))
  plain, ours = loop(jax.lax.top_k), loop(common.top_k)
  # Whether plain `lax.top_k` gets the routine in this loop is XLA's business, not asserted
  # (with jax 0.10.2 it got the comparator sort when this test was written).
  assert 'custom_call_target="TopK"' in ours.lower(x).compile().as_text()
  np.testing.assert_array_equal(ours(x)[1], plain(x)[1])


def test_top_k_differentiates_and_vmaps_like_lax_top_k():
  x = jax.random.normal(jax.random.key(2), (3, 2, 17))
  grad = jax.grad(lambda x: jnp.sum(common.top_k(x, 3)[0] ** 2))(x)
  want = jax.grad(lambda x: jnp.sum(jax.lax.top_k(x, 3)[0] ** 2))(x)
  np.testing.assert_allclose(grad, want)
  ties = jnp.array([[1.0, 3.0, 3.0, -2.0], [0.0, 0.0, 0.0, 0.0]])  # k = 1: an argmax
  grad = jax.grad(lambda x: jnp.sum(common.top_k(x, 1)[0] ** 2))(ties)
  np.testing.assert_array_equal(grad, jax.grad(lambda x: jnp.sum(jax.lax.top_k(x, 1)[0] ** 2))(
      ties))
  np.testing.assert_array_equal(jax.vmap(lambda r: common.top_k(r, 4)[1])(x),
                                jax.lax.top_k(x, 4)[1])


@pytest.mark.parametrize('shape', [(1,), (7,), (3, 2, 50)])
def test_sort_descending_equals_a_sort_with_ties_and_infinities(shape):
  rng = np.random.default_rng(len(shape))
  x = rng.integers(-3, 3, size=shape).astype(np.float32)
  x[rng.random(shape) < 0.2] = -np.inf
  x[rng.random(shape) < 0.05] = np.inf
  got = jax.jit(common.sort_descending)(jnp.asarray(x))
  np.testing.assert_array_equal(got, -np.sort(-x, axis=-1))


@pytest.mark.parametrize('shape', [(1,), (2,), (5, 33), (2, 3, 64)])
def test_argsort_descending_equals_a_stable_argsort(shape):
  rng = np.random.default_rng(7 + len(shape))
  x = rng.integers(-2, 2, size=shape).astype(np.float32)  # ties everywhere
  x[rng.random(shape) < 0.3] = -np.inf
  got = jax.jit(common.argsort_descending)(jnp.asarray(x))
  np.testing.assert_array_equal(got, np.argsort(-x, axis=-1, kind='stable'))
  ints = rng.integers(0, 5, size=shape).astype(np.int32)
  np.testing.assert_array_equal(jax.jit(common.argsort_descending)(jnp.asarray(ints)),
                                np.argsort(-ints, axis=-1, kind='stable'))


@pytest.mark.parametrize('shape', [(1, 1), (3, 2), (4, 37)])
def test_ranks_descending_is_the_inverse_of_a_stable_argsort(shape):
  rng = np.random.default_rng(11 + shape[1])
  x = rng.integers(-2, 2, size=shape).astype(np.float32)  # ties everywhere
  x[rng.random(shape) < 0.3] = -np.inf
  want = np.argsort(np.argsort(-x, axis=-1, kind='stable'), axis=-1, kind='stable')
  np.testing.assert_array_equal(jax.jit(common.ranks_descending)(jnp.asarray(x)), want)
