"""What a latent-reasoning decoder feeds back as the next input: the feedback modes.

After a forward pass gives the next-token logits (and the final-normed hidden state), the
next input embedding x [B, D] is built per row from one of these modes:

  discrete   E[token]                                  plain decoding
  concept    sum_k w_k E[id_k], w = Soft Thinking's truncated distribution: temperature,
             top-k, top-p, min-p (`decoding.sampling.log_probs`, renormalised after each),
             then keep the max_k most likely and renormalise
  full       softmax(logits) @ E over the whole vocabulary (SwiReasoning; temperature 1)
  hidden     the last hidden state itself (Coconut's continuous thought)
  gumbel     the concept support reweighted by Gumbel-softmax: softmax((log w + g) / tau)
  dirichlet  the concept support reweighted by a Dirichlet draw with concentration
             noise_scale * w (mean w; smaller scale = noisier)
  pause      E[<pause>] (pause tokens as thoughts: a fixed input, no information fed back)

Modes are ints so they can live in the loop state as a per-row array: one compiled loop
serves every mode, and a batch may mix them. E is the model's (tied) token embedding
params['embed']['embedding'] [V, D].

All of these except `discrete` are lossy: the model never saw mixtures in training unless
it was trained on them (Soft Thinking and SwiReasoning are training-free).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from decoding import sampling as sampling_lib
import pallas_kernels.common as kernel_common

DISCRETE, CONCEPT, FULL, HIDDEN, GUMBEL, DIRICHLET, PAUSE = range(7)
MODES: dict[str, int] = {'discrete': DISCRETE, 'concept': CONCEPT, 'full': FULL,
                         'hidden': HIDDEN, 'gumbel': GUMBEL, 'dirichlet': DIRICHLET,
                         'pause': PAUSE}
MIXTURE_MODES = (CONCEPT, FULL, GUMBEL, DIRICHLET)  # read out a token, end at </think>
FIXED_MODES = (HIDDEN, PAUSE)  # no token to read: a fixed number of thoughts, then </think>


def mode_id(name: str) -> int:
  if name not in MODES:
    raise ValueError(f'Unknown feedback mode {name!r}; known: {sorted(MODES)}.')
  return MODES[name]


@dataclasses.dataclass(frozen=True)
class ConceptConfig:
  """Soft Thinking's concept-token truncation (defaults from the paper's sampler) plus the
  noise of the noisy modes.

  temperature, top_k, top_p, min_p: as in `SamplingConfig` (temperature 0 = one-hot on the
    argmax, so the mixture is exactly E[argmax]).
  max_k: keep at most this many tokens (after the filters), then renormalise.
  noise_scale: Gumbel-softmax temperature tau (gumbel) or Dirichlet concentration scale
    (dirichlet).
  """
  temperature: float = 0.6
  top_k: int = 30
  top_p: float = 0.95
  min_p: float = 0.0
  max_k: int = 15
  noise_scale: float = 1.0

  def __post_init__(self):
    sampling_lib.SamplingConfig(self.temperature, self.top_k, self.top_p, self.min_p)
    if self.max_k < 1:
      raise ValueError(f'max_k must be >= 1, got {self.max_k}.')
    if self.noise_scale <= 0:
      raise ValueError(f'noise_scale must be > 0, got {self.noise_scale}.')

  @property
  def sampling(self) -> sampling_lib.SamplingConfig:
    return sampling_lib.SamplingConfig(self.temperature, self.top_k, self.top_p, self.min_p)


def entropy(logits_BxV: jax.Array) -> jax.Array:
  """Entropy (nats) of softmax(logits) at temperature 1, before any filtering: [B]."""
  logp = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.where(jnp.isfinite(logp), jnp.exp(logp) * logp, 0.0), axis=-1)


def topk_entropy(logits_BxV: jax.Array, k: int) -> jax.Array:
  """Entropy of the top-k probabilities renormalised (GlimpRouter's signal): [B]."""
  vals_BxK = kernel_common.top_k(logits_BxV.astype(jnp.float32),
                                 min(k, logits_BxV.shape[-1]))[0]
  return entropy(vals_BxK)


def concept_weights(logits_BxV: jax.Array, cfg: ConceptConfig
                    ) -> tuple[jax.Array, jax.Array]:
  """Soft Thinking's concept token: (weights [B, K], ids [B, K]), K = min(max_k, V).

  Weights sum to 1 per row; filtered-out entries have weight 0.
  """
  logp_BxV = sampling_lib.log_probs(logits_BxV, cfg.sampling)
  K = min(cfg.max_k, logp_BxV.shape[-1])
  vals_BxK, ids_BxK = kernel_common.top_k(logp_BxV, K)
  return jax.nn.softmax(vals_BxK, axis=-1), ids_BxK.astype(jnp.int32)


def mix(weights_BxK: jax.Array, ids_BxK: jax.Array, embed_VxD: jax.Array) -> jax.Array:
  """sum_k w_k E[id_k]: [B, D] in float32."""
  e_BxKxD = jnp.take(embed_VxD, ids_BxK, axis=0).astype(jnp.float32)
  return jnp.einsum('BK,BKD->BD', weights_BxK.astype(jnp.float32), e_BxKxD)


def gumbel_weights(weights_BxK: jax.Array, keys_B: jax.Array, tau: float) -> jax.Array:
  """Gumbel-softmax on the support of `weights` (zero weights stay zero)."""
  u = jax.vmap(lambda k: jax.random.uniform(k, weights_BxK.shape[1:], minval=1e-7,
                                            maxval=1.0))(keys_B)
  g = -jnp.log(-jnp.log(u))
  logw = jnp.where(weights_BxK > 0, jnp.log(jnp.maximum(weights_BxK, 1e-30)), -jnp.inf)
  return jax.nn.softmax((logw + g) / tau, axis=-1)


def dirichlet_weights(weights_BxK: jax.Array, keys_B: jax.Array, scale: float) -> jax.Array:
  """A Dirichlet draw with concentration scale * w on the support of `weights`."""
  alpha_BxK = jnp.where(weights_BxK > 0, scale * weights_BxK, 1.0)
  d = jax.vmap(lambda k, a: jax.random.dirichlet(k, jnp.maximum(a, 1e-6)))(keys_B, alpha_BxK)
  d = jnp.where(weights_BxK > 0, d, 0.0)
  return d / jnp.maximum(d.sum(-1, keepdims=True), 1e-30)


def _when(pred: jax.Array, fn, shape, *args):
  """fn(*args) if pred else zeros: skips the work when no row uses a mode."""
  return jax.lax.cond(pred, fn, lambda *_: jnp.zeros(shape, jnp.float32), *args)


def latent_embeds(mode_B: jax.Array, logits_BxV: jax.Array, hidden_BxD: jax.Array,
                  embed_VxD: jax.Array, noise_keys_B: jax.Array, cfg: ConceptConfig,
                  pause_id: int) -> jax.Array:
  """The latent input x [B, D] (float32) of each row's mode (see the module docstring).

  Rows whose mode is `discrete` get E[argmax] (callers feed E[token] for them instead).
  logits_BxV and hidden_BxD are the outputs at the previous position.
  """
  B, D = hidden_BxD.shape
  mode_B = jnp.asarray(mode_B, jnp.int32)
  w_BxK, ids_BxK = concept_weights(logits_BxV, cfg)

  def concept(w):
    return mix(w, ids_BxK, embed_VxD)

  x_concept = _when(jnp.any(mode_B == CONCEPT), concept, (B, D), w_BxK)
  x_gumbel = _when(jnp.any(mode_B == GUMBEL), lambda w: concept(
      gumbel_weights(w, noise_keys_B, cfg.noise_scale)), (B, D), w_BxK)
  x_dirichlet = _when(jnp.any(mode_B == DIRICHLET), lambda w: concept(
      dirichlet_weights(w, noise_keys_B, cfg.noise_scale)), (B, D), w_BxK)
  x_full = _when(jnp.any(mode_B == FULL), lambda l: jnp.einsum(
      'BV,VD->BD', jax.nn.softmax(l.astype(jnp.float32), -1), embed_VxD.astype(jnp.float32)),
                 (B, D), logits_BxV)
  x_pause = jnp.broadcast_to(embed_VxD[pause_id].astype(jnp.float32), (B, D))
  x_argmax = jnp.take(embed_VxD, jnp.argmax(logits_BxV, -1), axis=0).astype(jnp.float32)
  choices = [x_argmax, x_concept, x_full, hidden_BxD.astype(jnp.float32), x_gumbel,
             x_dirichlet, x_pause]
  return jnp.select([mode_B[:, None] == m for m in range(len(choices))], choices, x_argmax)
