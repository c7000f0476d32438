"""Learned unmasking policies for masked diffusion, trained by policy gradient.

The frozen masked-diffusion model of `policy.diffusion_workdir` decodes task prompts in the
canvas loop (no cache, one block over the whole answer, greedy tokens: what
`decoding/diffusion/unmask_policy.LearnedUnmaskDecoder` runs with block_size = the answer
length). At every step the policy (`UnmaskPolicy`, params['unmask_policy'], the only trained
tree) gives each masked position a probability; during training each position is unmasked
with that probability (independent Bernoulli draws; when no position is drawn the most
probable one is unmasked, a rule of the environment). A rollout's reward is

  reward = solved * max(1 - policy.cost * forwards / N, 0)      (N: the answer's canvas length)

(solved: for sudoku a valid grid that keeps every clue, as the task scores it; for other
tasks every answer token up to and including the reference <eos> equals the reference;
forwards: the diffusion model's forwards while the row was undecided). The reward is
multiplicative, as in Jazbec et al. 2025 (arXiv 2512.09106): a wrong answer earns nothing
however fast it was. With an additive one (solved - cost * forwards) the groups where every
rollout failed reward the fastest failure; our first sudoku4 run with it (cost 0.01 a forward,
learning rate 1e-3) drifted to unmasking everything in one step (59% solved in training,
down from 81% after 25 steps). Each prompt is rolled
out `policy.group` times; the advantage of a rollout is its reward minus the mean reward of
the other rollouts of its group (REINFORCE with a leave-one-out baseline, RLOO; as GRPO
without the clipped ratio and without dividing by the group's standard deviation, which
biased the gradient here: `group_advantages`), and

  loss = - mean over rollouts of advantage * sum over steps and positions of log pi(action)

The rollouts run with the parameters under stop_gradient (a `lax.while_loop` of at most N
steps that stops when every row is done; finished rows idle); the log-probabilities are then recomputed from the recorded
features with gradients. Evaluation decodes greedily (threshold 0.5, as the decoder does by
default) and reports solved, forwards per answer token and the reward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from data.tasks import exact_match
from data.tasks import sudoku
from models import kind as kind_lib
from models import transformer as transformer_lib
from models import unmask_policy as policy_lib
from training.objectives import diffusion_lib as lib
from training.objectives.registry import Objective, register
from workdir import loading


def policy_settings(config: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
  if config is None or 'policy' not in config:
    raise ValueError('This objective reads a `policy` config section (diffusion_workdir, group, '
                     'cost, ...): use configs/unmask_policy.py.')
  p = config.policy
  if p.group < 2:
    raise ValueError(f'policy.group must be >= 2 (the baseline is the group mean), got '
                     f'{p.group}.')
  if p.cost < 0:
    raise ValueError(f'policy.cost must be >= 0, got {p.cost}.')
  return p


def split_batch(batch: dict[str, jax.Array], prompt_width: int, answer_len: int, eos_id: int):
  """(prompt_BxP, prompt_len_B, reference_BxN, ref_len_B) from a task batch.

  Rows are <bos> prompt <sep> answer <eos> ... with weights on the answer and <eos>; the
  prompt ends where the weights start (`exact_match.encode_example`). reference_BxN: the
  N = `answer_len` tokens after the prompt; ref_len_B: answer + <eos> (at most N).
  """
  tokens, weights = batch['tokens'], batch['weights']
  prompt_len = jnp.argmax(weights > 0, axis=1).astype(jnp.int32) + 1
  idx = jnp.arange(prompt_width)[None, :]
  prompt = jnp.where(idx < prompt_len[:, None], tokens[:, :prompt_width], 0)
  ref_idx = jnp.clip(prompt_len[:, None] + jnp.arange(answer_len)[None, :], 0,
                     tokens.shape[1] - 1)
  reference = jnp.take_along_axis(tokens, ref_idx, axis=1)
  is_eos = reference == eos_id
  ref_len = jnp.where(is_eos.any(1), jnp.argmax(is_eos, axis=1) + 1, answer_len).astype(jnp.int32)
  return prompt, prompt_len, reference, ref_len


def rollout(model, model_params, policy_params, prompt_BxP, prompt_len_B, *, answer_len: int,
            mask_id: int, shift: int, eos_id: int, pad_id: int, rng: jax.Array | None,
            threshold: float = 0.5):
  """Decodes with the policy; sampled actions when `rng` is given, else greedy.

  The canvas loop of `decoding/diffusion/engine.py` for one block over the whole answer, no
  cache, greedy tokens, written here with plain arrays (training may not import decoding/);
  a test checks that it commits what the 'learned_unmask' decoder commits, token for token
  and forward for forward. The buffer is [prompt (prompt_len) | canvas (N) | padding] per row.

  Returns a dict: canvas_BxN (final tokens), forwards_B, in_range (B, N) and per step
  [S = N, ...] the features feats (S, B, N, F), eligible, actions (what was drawn or chosen,
  before the at-least-one rule) and active (S, B); steps after every row was done hold zeros
  (inactive). The loop stops when every row is done.
  """
  B, P = prompt_BxP.shape
  N = answer_len
  L = P + N
  plen = prompt_len_B.astype(jnp.int32)[:, None]
  idx = jnp.arange(L)[None, :]
  full_pos = jnp.where(idx < plen + N, idx, -1)
  canvas_idx = jnp.minimum(plen + jnp.arange(N)[None, :], L - 1)  # buffer index of canvas n
  in_range = jnp.ones((B, N), bool)
  vocab = model.cfg.vocab_size
  padded = jnp.pad(prompt_BxP, ((0, 0), (0, N)), constant_values=pad_id)
  seq0 = jnp.where(idx < plen, padded, jnp.where(idx < plen + N, mask_id, pad_id)).astype(jnp.int32)
  rows = jnp.arange(B)[:, None]

  def canvas_of(seq):
    return jnp.take_along_axis(seq, canvas_idx, axis=1)

  def done_of(cv):  # nothing masked before the first committed <eos> (or N)
    masked = cv == mask_id
    is_eos = ~masked & (cv == eos_id)
    end = jnp.where(is_eos.any(1), jnp.argmax(is_eos, axis=1) + 1, N)
    return ~jnp.any(masked & (jnp.arange(N)[None, :] < end[:, None]), axis=1)

  def step(carry, key):
    seq, done, forwards = carry
    active = ~done
    eligible = (canvas_of(seq) == mask_id) & active[:, None]
    logits = model.apply({'params': model_params}, seq, full_pos,
                         attn_mask='bidirectional').logits_BxTxV
    e = jnp.clip(plen + jnp.arange(N)[None, :] - shift, 0, L - 1)
    region = jnp.take_along_axis(logits, e[..., None], axis=1).astype(jnp.float32)
    logp = jax.nn.log_softmax(region.at[..., mask_id].set(-jnp.inf), axis=-1)  # SUBS
    token = jnp.argmax(logp, axis=-1).astype(jnp.int32)
    p = jnp.exp(logp)
    top2 = jax.lax.top_k(p, 2)[0]
    feats = policy_lib.features(
        jnp.exp(jnp.take_along_axis(logp, token[..., None], axis=-1)[..., 0]),
        top2[..., 0] - top2[..., 1], -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1),
        eligible, in_range, vocab)
    probs = jax.nn.sigmoid(policy_lib.UnmaskPolicy().apply({'params': policy_params}, feats,
                                                           in_range))
    if key is None:
      actions = eligible & (probs > threshold)
    else:
      actions = eligible & (jax.random.uniform(key, probs.shape) < probs)
    best = jax.nn.one_hot(jnp.argmax(jnp.where(eligible, probs, -jnp.inf), axis=1), N, dtype=bool)
    commit = (actions | best) & eligible  # at least the most probable position
    seq = seq.at[rows, jnp.where(commit, canvas_idx, L)].set(token, mode='drop')
    done = done | done_of(canvas_of(seq))
    rec = dict(feats=feats, eligible=eligible, actions=actions, active=active)
    return (seq, done, forwards + active.astype(jnp.int32)), rec

  keys = jax.random.split(rng, N) if rng is not None else None
  carry0 = (seq0, jnp.zeros((B,), bool), jnp.zeros((B,), jnp.int32))
  recs0 = jax.tree.map(lambda x: jnp.zeros((N,) + x.shape, x.dtype),
                       jax.eval_shape(lambda c: step(c, None if keys is None else keys[0])[1],
                                      carry0))

  def body(loop):  # stops once every row is done: no forward is spent on finished batches
    i, carry, recs = loop
    carry, rec = step(carry, None if keys is None else keys[i])
    return i + 1, carry, jax.tree.map(lambda r, x: r.at[i].set(x), recs, rec)

  _, carry, recs = jax.lax.while_loop(lambda l: (l[0] < N) & ~jnp.all(l[1][1]), body,
                                      (jnp.zeros((), jnp.int32), carry0, recs0))
  seq, _, forwards = carry
  return dict(canvas_BxN=canvas_of(seq), forwards_B=forwards, in_range=in_range, **recs)


def solved(canvas_BxN: jax.Array, reference_BxN: jax.Array, ref_len_B: jax.Array) -> jax.Array:
  """[B] float: every position before ref_len (the answer and its <eos>) equals the reference."""
  N = canvas_BxN.shape[1]
  need = jnp.arange(N)[None, :] < ref_len_B[:, None]
  return jnp.all((canvas_BxN == reference_BxN) | ~need, axis=1).astype(jnp.float32)


def sudoku_solved(canvas_BxN: jax.Array, prompt_BxP: jax.Array, digit_ids: jax.Array,
                  blank_id: int, n: int) -> jax.Array:
  """[B] float: the canvas starts with a valid n^2 x n^2 grid that keeps every clue of the
  puzzle in prompt[:, 1:1 + n^4] (<bos> puzzle <sep>; `blank_id` the blank's token), as
  `data.tasks.sudoku.is_valid_solution` scores a full-grid answer. digit_ids: the tokens of
  1..n^2."""
  size, cells = n * n, n ** 4
  grid = canvas_BxN[:, :cells]
  digit = jnp.argmax(grid[..., None] == digit_ids, axis=-1) + 1
  digit = jnp.where(jnp.any(grid[..., None] == digit_ids, -1), digit, 0)  # 0: not a digit
  puzzle = prompt_BxP[:, 1:1 + cells]
  keeps = jnp.all((puzzle == blank_id) | (puzzle == grid), axis=1)
  g = digit.reshape(-1, size, size)
  boxes = g.reshape(-1, n, n, n, n).transpose(0, 1, 3, 2, 4).reshape(-1, size, size)
  one_hot = lambda lines: jax.nn.one_hot(lines - 1, size)  # digit 0 -> all zeros
  complete = lambda lines: jnp.all(one_hot(lines).sum(axis=-2) == 1, axis=(1, 2))
  return (keeps & complete(g) & complete(g.transpose(0, 2, 1)) & complete(boxes)
          ).astype(jnp.float32)


def log_prob(policy_params, recs) -> jax.Array:
  """[B]: sum over steps and eligible positions of log pi(action) (Bernoulli)."""
  S, B, N, F = recs['feats'].shape
  logits = policy_lib.UnmaskPolicy().apply(
      {'params': policy_params}, recs['feats'].reshape(S * B, N, F),
      jnp.broadcast_to(recs['in_range'], (S, B, N)).reshape(S * B, N)).reshape(S, B, N)
  lp = jnp.where(recs['actions'], jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits))
  use = recs['eligible'] & recs['active'][..., None]
  return jnp.sum(jnp.where(use, lp, 0.0), axis=(0, 2))


def group_advantages(reward_B: jax.Array, group: int) -> jax.Array:
  """reward - the mean reward of the other rollouts of its group (leave-one-out, RLOO), rows
  ordered group-major [prompts * group]. An unbiased policy-gradient weight: the baseline
  does not depend on the rollout's own actions. No division by the group's standard
  deviation (GRPO's): measured on sudoku4, it turned the estimated gradient of the
  confidence offset the wrong way (finite differences: a higher offset earned more), since it
  blows up the small speed-only reward differences of groups that all solved."""
  r = reward_B.reshape(-1, group)
  others = (r.sum(1, keepdims=True) - r) / (group - 1)
  return (r - others).reshape(-1)


@register('unmask_policy')
def unmask_policy_objective(model: transformer_lib.Transformer,
                            config: ml_collections.ConfigDict) -> Objective:
  p = policy_settings(config)
  s = lib.settings(config)
  if not lib.task_name(config):
    raise ValueError("Objective 'unmask_policy' needs config.task.name (a generated task).")
  task = exact_match.get(lib.task_name(config))
  P, N = task.max_prompt_chars + 2, task.max_answer_chars + 1
  hooks = lib.data_hooks(config, s.mask_id)
  ids: dict[str, int] = {}

  def load_base():
    if not p.diffusion_workdir:
      raise ValueError('policy.diffusion_workdir must name the trained masked-diffusion run.')
    loaded = loading.load_model(p.diffusion_workdir)
    kind_lib.require(loaded.kind, ('diffusion',), f'policy.diffusion_workdir={p.diffusion_workdir}')
    if loaded.kind.attention != 'bidirectional' or loaded.kind.shift != s.shift:
      raise ValueError(f'policy.diffusion_workdir={p.diffusion_workdir} holds a '
                       f'{loaded.kind.describe()} model; this objective decodes bidirectional '
                       f'masked diffusion with shift={s.shift} (set diffusion.shift to match).')
    loading.require_same_model(model.cfg, loaded, f'policy.diffusion_workdir={p.diffusion_workdir}')
    return loaded.params

  sudoku_n = {'sudoku4': 2, 'sudoku9': 3}.get(task.name, 0)

  def set_ids(tokenizer):
    ids.update(eos=tokenizer.eos_id, pad=tokenizer.pad_id, mask=tokenizer.mask_id)
    if sudoku_n:
      ids.update(digits=list(tokenizer.encode(''.join(str(d) for d in
                                                       range(1, sudoku_n ** 2 + 1)))),
                 blank=list(tokenizer.encode(sudoku.BLANK))[0])

  def train_iter(dc, tokenizer, **kwargs):
    set_ids(tokenizer)
    return hooks['make_train_iterator'](dc, tokenizer, **kwargs)

  def eval_batches(dc, tokenizer, **kwargs):
    set_ids(tokenizer)
    return hooks['make_eval_batches'](dc, tokenizer, **kwargs)

  def run(params, batch, rng, group):
    if 'eos' not in ids:
      raise ValueError('unmask_policy: the data hooks were not called before the loss (the '
                       'trainer sets the token ids from the tokenizer there).')
    prompt, plen, ref, rlen = split_batch(batch, P, N, ids['eos'])
    if group > 1:
      rep = lambda x: jnp.repeat(x, group, axis=0)
      prompt, plen, ref, rlen = rep(prompt), rep(plen), rep(ref), rep(rlen)
    out = rollout(model, jax.lax.stop_gradient(params['model']),
                  jax.lax.stop_gradient(params[policy_lib.HEAD]), prompt, plen,
                  answer_len=N, mask_id=s.mask_id if s.mask_id >= 0 else ids['mask'],
                  shift=int(s.shift), eos_id=ids['eos'], pad_id=ids['pad'], rng=rng)
    if sudoku_n:
      ok = sudoku_solved(out['canvas_BxN'], prompt, jnp.asarray(ids['digits']), ids['blank'],
                         sudoku_n)
    else:
      ok = solved(out['canvas_BxN'], ref, rlen)
    forwards = out['forwards_B'].astype(jnp.float32)
    reward = ok * jnp.maximum(1.0 - p.cost * forwards / N, 0.0)
    return out, ok, forwards, reward, rlen

  def loss_fn(params, batch, rng):
    out, ok, forwards, reward, rlen = run(params, batch, rng, p.group)
    adv = jax.lax.stop_gradient(group_advantages(reward, p.group))
    lp = log_prob(params[policy_lib.HEAD], out)
    loss = -jnp.mean(adv * lp)
    return loss, dict(loss=loss, reward=reward.mean(), solved=ok.mean(),
                      forwards_per_token=jnp.mean(forwards / rlen))

  def eval_fn(params, batch, rng):
    del rng
    _, ok, forwards, reward, rlen = run(params, batch, None, 1)
    return -reward.mean(), dict(loss=-reward.mean(), reward=reward.mean(), solved=ok.mean(),
                                forwards_per_token=jnp.mean(forwards / rlen))

  def init_extras(rng):
    return {policy_lib.HEAD: policy_lib.init_params(rng, R=N)}

  return Objective(
      loss_fn=loss_fn, eval_fn=eval_fn, init_extras=init_extras, frozen=('model',),
      make_train_iterator=train_iter, make_eval_batches=eval_batches,
      init_model_params=load_base,
      kind=kind_lib.ModelKind(attention='bidirectional', mask_id=s.mask_id, shift=s.shift))

