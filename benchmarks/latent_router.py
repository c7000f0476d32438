"""Train the R2R-style token router: where do the small and large models diverge?

  python -m benchmarks.latent_router --small=runs/latent/prosqa/cot_small \\
      --large=runs/latent/prosqa/cot --task=prosqa --out=runs/latent/prosqa/router.npz

Both models read the same teacher-forced chain-of-thought rows of the task (train split);
at every target position the label is 1 when their greedy next tokens differ (R2R's
divergence label, without its continuation check). The router (decoding/latent/routing.py)
is a 2-layer MLP over the small model's top-k log-probabilities, entropy, last hidden state
and the embedding of its top token, trained with class-balanced logistic loss and Adam.
Writes an .npz the `r2r` decoder reads (`--decoder_config.router_path=...`). ~1 min on CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from data.tasks import reasoning
from decoding.latent import routing
from workdir import loading



def cot_rows(tokenizer, task, n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Teacher-forced CoT rows [n, T] and target masks [n, T] (position t predicts t + 1)."""
  exs = reasoning.examples(task, n, seed=seed)
  seqs = [reasoning.prompt_ids(tokenizer, e) + sum(reasoning.step_ids(tokenizer, e), [])
          + reasoning.answer_ids(tokenizer, e) for e in exs]
  T = max(map(len, seqs))
  tokens = np.full((n, T), tokenizer.eos_id, np.int32)
  mask = np.zeros((n, T), bool)
  for i, (e, s) in enumerate(zip(exs, seqs)):
    tokens[i, :len(s)] = s
    mask[i, len(reasoning.prompt_ids(tokenizer, e)) - 1:len(s) - 1] = True
  return tokens, mask


@functools.partial(jax.jit, static_argnums=(0,))
def outputs(model, params, tokens_BxT):
  """Full forward: (logits [B, T, V], last hidden state [B, T, D])."""
  out = model.apply({'params': params}, tokens_BxT)
  return out.logits_BxTxV, out.last_hidden_BxTxD


def features_and_labels(small, large, tokens: np.ndarray, mask: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
  feats, labels = [], []
  for i in range(0, len(tokens), 64):
    t = jnp.asarray(tokens[i:i + 64])
    ls, hs = outputs(small.model, small.params, t)
    ll, _ = outputs(large.model, large.params, t)
    m = mask[i:i + 64]
    B, T, V = ls.shape
    f = routing.router_features(ls.reshape(B * T, V), hs.reshape(B * T, -1),
                                small.params['embed']['embedding'])
    feats.append(np.asarray(f)[m.reshape(-1)])
    labels.append(np.asarray(jnp.argmax(ls, -1) != jnp.argmax(ll, -1)).reshape(-1)[m.reshape(-1)])
  return np.concatenate(feats), np.concatenate(labels).astype(np.float32)


def train_router(feats: np.ndarray, labels: np.ndarray, steps: int, seed: int = 0
                 ) -> tuple[dict[str, jax.Array], dict[str, float]]:
  """Fits the MLP; returns it and train metrics (balanced accuracy on the training set)."""
  router = routing.init_router(jax.random.key(seed), feats.shape[1])
  router['mean'] = jnp.asarray(feats.mean(0))
  router['scale'] = jnp.asarray(feats.std(0) + 1e-4)
  pos = max(labels.mean(), 1e-3)
  w = jnp.asarray(np.where(labels > 0, 0.5 / pos, 0.5 / max(1 - pos, 1e-3)))
  x, y = jnp.asarray(feats), jnp.asarray(labels)
  trainable = {k: v for k, v in router.items() if k not in ('mean', 'scale')}
  tx = optax.adamw(3e-3, weight_decay=1e-4)
  opt = tx.init(trainable)

  @jax.jit
  def step(p, opt):
    def loss(p):
      logit = routing.router_logit({**router, **p}, x)
      return jnp.mean(w * optax.sigmoid_binary_cross_entropy(logit, y))
    l, g = jax.value_and_grad(loss)(p)
    upd, opt = tx.update(g, opt, p)
    return optax.apply_updates(p, upd), opt, l

  for _ in range(steps):
    trainable, opt, l = step(trainable, opt)
  router = {**router, **trainable}
  pred = np.asarray(routing.router_logit(router, x) > 0)
  tpr = (pred & (labels > 0)).sum() / max((labels > 0).sum(), 1)
  tnr = (~pred & (labels == 0)).sum() / max((labels == 0).sum(), 1)
  return router, {'loss': float(l), 'divergent_fraction': float(labels.mean()),
                  'balanced_accuracy': float((tpr + tnr) / 2)}



def define_flags() -> None:
  """Command-line flags (defined only when run as a script, so the module can be imported)."""
  global _SMALL, _LARGE, _TASK, _OUT, _ROWS, _STEPS
  _SMALL = flags.DEFINE_string('small', None, 'Workdir of the small model.')
  _LARGE = flags.DEFINE_string('large', None, 'Workdir of the large model.')
  _TASK = flags.DEFINE_string('task', 'prosqa', 'Reasoning task of the rows.')
  _OUT = flags.DEFINE_string('out', None, 'Where to write the router (.npz).')
  _ROWS = flags.DEFINE_integer('rows', 512, 'Training rows.')
  _STEPS = flags.DEFINE_integer('steps', 400, 'Adam steps (full batch).')

def main(argv):
  del argv
  small, large = loading.load_model(_SMALL.value), loading.load_model(_LARGE.value)
  tokens, mask = cot_rows(small.tokenizer, reasoning.get(_TASK.value), _ROWS.value)
  feats, labels = features_and_labels(small, large, tokens, mask)
  router, metrics = train_router(feats, labels, _STEPS.value)
  routing.save_router(_OUT.value, router)
  print(f'router -> {_OUT.value}: {metrics}')


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['small', 'large', 'out'])
  app.run(main)
