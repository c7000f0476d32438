"""EAGLE drafts on a frozen target (models/eagle.py): `eagle3_draft` and `eagle1_draft`.

Both start from the target checkpoint in `spec.target_workdir` and train only
params['eagle3'] / params['eagle1'] (the target, its embedding and head frozen).

Training row: tokens x_0 .. x_T; the target runs on x_0 .. x_{T-1} (features h_p and
next-token distributions p_p at each position p). Draft pair i (i = 0 .. T - 2) sits at
position i + 1: feature h_i, token x_{i+1}; its output predicts x_{i+2}.

Training-time test (EAGLE-3; `spec.ttt_steps` = K unrolled steps): step 0 reads the fused
target features; step j >= 1 reads, at pair i, the draft's own step-(j-1) output at pair i
(what decoding feeds it: its output at the previous position of the same draft path) and the
data token x_{i+1+j}, at position i + 1 + j. Step j's query at pair i sees the step-0 keys of
pairs <= i (the committed prefix, target features) and its own path: the step-1 .. j keys of
pair i (`ttt_mask`). Each step runs the layer over the blocks of steps 0 .. j concatenated
with that mask (earlier blocks are recomputed; they see only blocks at or before their own).
Loss = sum_j decay^j KL(p_{i+1+j} || q_j) / sum_j decay^j, over pairs whose step-j target lies
in the row. EAGLE-1 (`eagle1_draft`, one step by default): smooth L1 between the predicted
and the target's next feature (weight `spec.reg_weight`) + `spec.ce_weight` x the same soft
cross-entropy, with uniform noise U(-a/2, a/2) (a = `spec.feature_noise`) on the input
features. Metrics: `agree{j+1}`, the step-j draft's top-1 agreement with the target (the
greedy acceptance of the (j+1)-th drafted token given the previous ones were right).

Reduced draft vocabulary (`spec.draft_vocab` = Vd > 0, EAGLE-3's d2t/t2d): the Vd most
frequent tokens of the training split under the target's tokenizer (counted over the first
`spec.draft_vocab_docs` documents, 0 = all) become params[variant]['hot_ids'] (int32, never
trained). The draft's logits cover those tokens only; the target's distribution is restricted
to them and renormalised, and positions whose target argmax lies outside them are left out of
the loss (as in EAGLE-3's training). `agree{j+1}` still compares with the target's argmax over
the whole vocabulary, and `hot_mass` is the target's mean probability on the set.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from models import draft_vocab
from models import eagle as eagle_lib
from models import heads as heads_lib
from models import transformer as transformer_lib
from training.objectives import spec_heads
from training.objectives.registry import Objective, register


def ttt_mask(n: int, step: int) -> jax.Array:
  """[(step+1) n, (step+1) n] bool: query (block a, pair i) sees key (block c, pair i') iff
  (c == 0 and i' <= i) or (1 <= c <= a and i' == i)."""
  blk = jnp.repeat(jnp.arange(step + 1), n)
  idx = jnp.tile(jnp.arange(n), step + 1)
  qa, qi = blk[:, None], idx[:, None]
  kc, ki = blk[None, :], idx[None, :]
  return ((kc == 0) & (ki <= qi)) | ((kc >= 1) & (kc <= qa) & (ki == qi))


def ttt_unroll(module: eagle_lib.EagleDraft, params, x0_BxNxD, tokens_BxT, in_emb, out_emb,
               steps: int):
  """The K unrolled steps over one batch of rows.

  x0_BxNxD: fused target features of pairs 0 .. N-1 (N = T - 1); tokens_BxT: x_0 .. x_{T-1}.
  Returns ([g_j [B, N, D]], [logits_j [B, N, V]], [inputs x_j [B, N, D]]) for j < steps.
  """
  B, N, _ = x0_BxNxD.shape
  pad = jnp.pad(tokens_BxT, ((0, 0), (0, steps)))
  xs, toks, poss, gs, logits = [], [], [], [], []
  x = x0_BxNxD
  for j in range(steps):
    xs.append(x)
    toks.append(pad[:, 1 + j:1 + j + N])
    poss.append(jnp.broadcast_to(jnp.arange(1 + j, 1 + j + N), (B, N)))
    mask = ttt_mask(N, j)[None]
    g, lg, _ = module.apply({'params': params}, jnp.concatenate(xs, 1),
                            jnp.concatenate(toks, 1), jnp.concatenate(poss, 1), in_emb,
                            out_emb, attn_mask=mask)
    g, lg = g[:, j * N:], lg[:, j * N:]
    gs.append(g)
    logits.append(lg)
    x = g
  return gs, logits, xs


def _smooth_l1(a, b):
  d = jnp.abs(a - b)
  return jnp.where(d < 1.0, 0.5 * d * d, d - 0.5)


def _make(variant: str, model: transformer_lib.Transformer,
          config: ml_collections.ConfigDict) -> Objective:
  s = spec_heads.spec_settings(config)
  cfg = model.cfg
  ids = eagle_lib.feature_layers(cfg.num_layers, s.feature_layers)
  own_head = bool(s.get('own_head', False))  # runs written before the setting: False
  module = eagle_lib.EagleDraft(cfg, variant, len(ids), own_head)
  K = s.ttt_steps
  if K < 1:
    raise ValueError(f'spec.ttt_steps must be >= 1, got {K}.')

  hot = spec_heads.draft_vocabulary(config, cfg.valid_vocab_size or cfg.vocab_size)

  def init_extras(rng):
    return {variant: eagle_lib.init_params(cfg, variant, ids, rng, own_head, hot_ids=hot)}

  def loss_fn(params, batch, rng):
    tokens = batch['tokens']
    inputs = tokens[:, :-1]
    B, T = inputs.shape
    N = T - 1
    out = jax.tree.map(jax.lax.stop_gradient,
                       model.apply({'params': params['model']}, inputs,
                                   return_hidden=variant == eagle_lib.EAGLE3))
    feats = eagle_lib.target_features(out, variant, ids)
    if variant == eagle_lib.EAGLE1 and s.feature_noise > 0:
      feats = feats + s.feature_noise * (jax.random.uniform(rng, feats.shape) - 0.5)
    hot_ids = draft_vocab.ids(params[variant])
    p = draft_vocab.without(params[variant])
    in_emb = jax.lax.stop_gradient(heads_lib.input_embedding(params['model']))
    # The head's rows of the draft vocabulary (+ head_delta, added by the module).
    out_emb = draft_vocab.head_rows(params[variant], jax.lax.stop_gradient(
        heads_lib.output_embedding(params['model'], cfg)))
    x0 = module.apply({'params': p}, feats[:, :N], method=eagle_lib.EagleDraft.fuse)
    gs, logits, _ = ttt_unroll(module, p, x0, inputs, in_emb, out_emb, K)
    t_logits = out.logits_BxTxV.astype(jnp.float32)
    full_argmax = jnp.pad(jnp.argmax(t_logits, -1), ((0, 0), (0, K + 1)))
    keep = jnp.ones(full_argmax.shape, bool)
    if hot_ids is not None:  # the target restricted to the draft's tokens, renormalised
      metrics_hot = jnp.sum(jax.nn.softmax(t_logits, -1)[..., hot_ids], -1).mean()
      keep = draft_vocab.target_index(hot_ids, cfg.vocab_size)[full_argmax] >= 0
      t_logits = jnp.take(t_logits, hot_ids, axis=-1)
    logp_t = jax.nn.log_softmax(t_logits, -1)
    logp_t = jnp.pad(logp_t, ((0, 0), (0, K + 1), (0, 0)))
    h_next = jnp.pad(out.last_hidden_BxTxD, ((0, 0), (0, K + 1), (0, 0)))
    total, norm, metrics = 0.0, 0.0, {}
    for j in range(K):
      tgt = logp_t[:, 1 + j:1 + j + N]                      # p at position i + 1 + j
      in_row = (jnp.arange(N)[None] + 1 + j <= T - 1) * jnp.ones((B, 1))
      valid = in_row * keep[:, 1 + j:1 + j + N]
      denom = jnp.maximum(valid.sum(), 1.0)
      logq = jax.nn.log_softmax(logits[j].astype(jnp.float32), -1)
      pt = jnp.exp(tgt)
      kl = jnp.sum(pt * (tgt - logq), -1)
      kl = (kl * valid).sum() / denom
      drafted = jnp.argmax(logq, -1)
      if hot_ids is not None:
        drafted = jnp.take(hot_ids, drafted)
      agree = ((drafted == full_argmax[:, 1 + j:1 + j + N]) * in_row).sum() / jnp.maximum(
          in_row.sum(), 1.0)
      step_loss = kl
      if variant == eagle_lib.EAGLE1:
        reg = _smooth_l1(gs[j].astype(jnp.float32),
                         h_next[:, 1 + j:1 + j + N].astype(jnp.float32)).mean(-1)
        reg = (reg * valid).sum() / denom
        metrics[f'reg{j + 1}'] = reg
        step_loss = s.reg_weight * reg + s.ce_weight * kl
      w = s.decay ** j
      total, norm = total + w * step_loss, norm + w
      metrics[f'kl{j + 1}'] = kl
      metrics[f'agree{j + 1}'] = agree
    loss = total / norm
    if hot_ids is not None:
      metrics['hot_mass'] = metrics_hot
    return loss, dict(metrics, loss=loss)

  init_model = spec_heads._init_from(s, model)  # pylint: disable=protected-access
  return Objective(loss_fn=loss_fn, init_extras=init_extras, frozen=('model',),
                   init_model_params=init_model)


@register('eagle3_draft')
def eagle3_draft(model: transformer_lib.Transformer,
                 config: ml_collections.ConfigDict) -> Objective:
  """EAGLE-3: fused low/mid/high features, training-time test (see module docstring)."""
  return _make(eagle_lib.EAGLE3, model, config)


@register('eagle1_draft')
def eagle1_draft(model: transformer_lib.Transformer,
                 config: ml_collections.ConfigDict) -> Objective:
  """EAGLE-1: top feature, feature regression + token loss (see module docstring)."""
  return _make(eagle_lib.EAGLE1, model, config)
