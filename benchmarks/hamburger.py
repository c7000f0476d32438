"""HAMburger: tokens per base forward, KV entries per token and quality against AR of equal size.

  python train.py --config=configs/hamburger.py:tiny --workdir=runs/ham_tiny \
      --config.hamburger.target_workdir=runs/tiny
  python -m benchmarks.hamburger --run=runs/ham_tiny --base=runs/tiny

`--run` holds the fine-tuned base plus the embedder and micro decoder (models/hamburger.py;
lossy), `--base` the AR run it was fine-tuned from (the same model size). Measured in one
process, on the same held-out prompts:

  generation       greedy, `--new_tokens` tokens per prompt, batches of `--batch` ragged
                   prompts: `ar` on the base, then `hamburger` at each continue `--thresholds`
                   and with one-token steps (max_tokens=1, the wrapped base as plain AR).
                   Tokens per base forward (prefill counted, as tau everywhere), KV entries
                   per generated token (cache entries written after the prompt), tokens/s of
                   the fastest of `--repeats` passes alternated with AR's, the speedup, and the
                   quality of the text: its perplexity under the base (teacher-forced over
                   prompt + output, output tokens scored) and its agreement with AR's output.
  held-out NLL     teacher-forced on `--docs` held-out windows of `--seq_tokens` tokens: the
                   base's AR NLL per token, and the HAMburger model's own NLL per token with
                   its training segmentation (steps of tokens it gives p >= tau) and with
                   one-token steps.

Writes benchmarks/results/hamburger_cpu.{md,json} (+ .png; another name with --out). One
run, one seed, greedy, times on a shared 2-core CPU where the tiny model is not memory-bound (a base forward costs little
more over a batch of entries than over one; real LLMs' memory-bound decode is the regime the
paper's speedups need).
"""

from __future__ import annotations

import argparse
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks import harness
from decoding import Models, SamplingConfig
from decoding import registry
from models import hamburger as ham_lib
from training.objectives import hamburger as ham_obj
from workbench import Workbench


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def heldout_nll(model, params, hb, k: int, tau: float, tokens_BxN):
  """(AR NLL per token of `params` as a plain LM, HAMburger NLL per token with the training
  segmentation, with one-token steps, tokens per step of the segmentation)."""
  logp = jax.nn.log_softmax(model.apply({'params': params}, tokens_BxN[:, :-1]).logits_BxTxV)
  tok_lp = jnp.take_along_axis(logp, tokens_BxN[:, 1:, None], -1)[..., 0]
  ar = -jnp.mean(tok_lp)
  if hb is None:
    return ar, ar, ar, 1.0
  starts = ham_obj.segment(jnp.pad(jnp.exp(tok_lp), ((0, 0), (1, 0))), k, tau)

  def nll(s):
    ce1, w1, cem, wm, *_, size = ham_obj.step_losses(model, params, hb, tokens_BxN, s, k)
    return ((jnp.sum(ce1 * w1) + jnp.sum(cem * wm)) / (jnp.sum(w1) + jnp.sum(wm)),
            tokens_BxN.size / jnp.sum(size > 0))

  ham, per_step = nll(starts)
  single, _ = nll(jnp.ones_like(starts))
  return ar, ham, single, per_step


@functools.partial(jax.jit, static_argnums=(0,))
def _scored_logp(model, params, tokens_BxT, score_BxT):
  logp = jax.nn.log_softmax(model.apply({'params': params}, tokens_BxT[:, :-1]).logits_BxTxV)
  lp = jnp.take_along_axis(logp, tokens_BxT[:, 1:, None], -1)[..., 0]
  return jnp.sum(lp * score_BxT[:, 1:]), jnp.sum(score_BxT[:, 1:])


def output_ppl(model, params, prompts, outputs, pad_id: int) -> float:
  """Perplexity under (model, params) of the outputs, each read after its prompt."""
  L = max(len(p) + len(o) for p, o in zip(prompts, outputs))
  L = int(math.ceil(L / 64) * 64)
  toks = np.full((len(prompts), L), pad_id, np.int32)
  score = np.zeros((len(prompts), L), np.float32)
  for r, (p, o) in enumerate(zip(prompts, outputs)):
    toks[r, :len(p) + len(o)] = p + o
    score[r, len(p):len(p) + len(o)] = 1.0
  s, n = _scored_logp(model, params, jnp.asarray(toks), jnp.asarray(score))
  return math.exp(-float(s) / max(float(n), 1.0))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--run', default='runs/ham_tiny')
  ap.add_argument('--base', default='runs/tiny')
  ap.add_argument('--prompts', type=int, default=16)
  ap.add_argument('--prompt_chars', type=int, default=64)
  ap.add_argument('--new_tokens', type=int, default=128)
  ap.add_argument('--batch', type=int, default=8)
  ap.add_argument('--thresholds', default='0.2,0.3,0.5,0.7')
  ap.add_argument('--repeats', type=int, default=5)
  ap.add_argument('--docs', type=int, default=32)
  ap.add_argument('--seq_tokens', type=int, default=128)
  ap.add_argument('--out', default='hamburger_cpu', help='results name (.md, .json, .png)')
  args = ap.parse_args()

  ham, base = Workbench.load(args.run), Workbench.load(args.base)
  if ham_lib.HAMBURGER not in ham.extras:
    raise ValueError(f'{args.run} holds no HAMburger wrapper: train it with '
                     'configs/hamburger.py.')
  hb = ham.extras[ham_lib.HAMBURGER]
  k = ham_lib.max_tokens(hb)
  tau = float(ham.config['hamburger']['tau'])
  tok = ham.tokenizer
  cfg = ham.model.cfg

  # Held-out NLL, teacher-forced.
  texts = ham.heldout_prompts(args.docs, chars=4 * args.seq_tokens)[0]
  seqs = [s[:args.seq_tokens] for s in map(tok.encode_prompt, texts)
          if len(s) >= args.seq_tokens]
  docs = jnp.asarray(seqs, jnp.int32)
  base_nll = float(heldout_nll(base.model, base.params, None, k, tau, docs)[0])
  ham_ar, ham_nll, ham_single, per_step = map(
      float, heldout_nll(ham.model, ham.params, hb, k, tau, docs))

  # Generation.
  _, prompts = ham.heldout_prompts(args.prompts, chars=args.prompt_chars)
  batches = harness.make_batches(prompts, args.batch, tok.pad_id)
  kw = dict(max_new=args.new_tokens, cache_size=harness.cache_slots(prompts, args.new_tokens),
            eos_id=tok.eos_id, pad_id=tok.pad_id)
  greedy = SamplingConfig(temperature=0.0)
  specs = ['hamburger:max_tokens=1'] + [f'hamburger:threshold={t}'
                                        for t in args.thresholds.split(',')]
  ar_dec = registry.build('ar', {}, greedy)
  ar_prog = (harness.compile_decoder(ar_dec, Models(base.model), {'target': base.params},
                                     batches, **kw)[0], {'target': base.params})
  ham_params = {'target': ham.params, ham_lib.HAMBURGER: hb}
  progs = [ar_prog]
  for spec in specs:
    dec = ham.decoder(spec, greedy)
    progs.append((harness.compile_decoder(dec, Models(ham.model), ham_params, batches,
                                          **kw)[0], ham_params))
  best, results = harness.alternate(progs, batches, repeats=args.repeats)
  summaries = [harness.summarise(r, t, 0.0) for r, t in zip(results, best)]
  rows_n = len(prompts)
  ar_sum = summaries[0]

  def kv_per_token(s, res):
    if res is None:  # AR: one entry per generated token but the last
      entries = s['target_forwards'] - rows_n
    else:
      entries = int(sum(np.asarray(r.extra['kv_entries']).sum() for r in res))
    return entries / s['generated']

  class _Row:
    def __init__(self, tokens):
      self.tokens = tokens

  ar_rows = [_Row(t) for t in ar_sum['tokens']]
  own_rows = [_Row(t) for t in summaries[1]['tokens']]  # max_tokens=1: the fine-tuned base's AR
  table, payload = [], []
  for i, (label, s) in enumerate(zip(['ar (base)'] + specs, summaries)):
    agree, prefix = harness.agreement(ar_rows, [_Row(t) for t in s['tokens']])
    own = harness.agreement(own_rows, [_Row(t) for t in s['tokens']])[0] if i else float('nan')
    ppl = output_ppl(base.model, base.params, prompts, s['tokens'], tok.pad_id)
    kvpt = kv_per_token(s, None if i == 0 else jax.device_get(results[i]))
    speedup = s['tokens_per_s'] / ar_sum['tokens_per_s']
    flag = ' (!)' if common.speedup_above_tau(speedup, s['tau']) else ''
    row = dict(decoder=label, tokens_per_forward=s['tau'], kv_entries_per_token=kvpt,
               generated=s['generated'], target_forwards=s['target_forwards'],
               other_forwards=s['other_forwards'], tokens_per_s=s['tokens_per_s'],
               speedup=speedup, ppl_under_base=ppl, agreement_with_ar=agree,
               common_prefix=prefix, agreement_with_one_token_steps=own, wall_s=s['wall_s'])
    payload.append(row)
    table.append([label, s['tau'], kvpt, s['other_forwards'] / s['generated'], ppl, agree,
                  prefix, '-' if i == 0 else own, s['tokens_per_s'], f'{speedup:.2f}{flag}'])
    print(table[-1], flush=True)

  header = ['decoder', 'τ (tokens per forward, base)', 'KV entries per token',
            'micro passes per token', 'output ppl under base', 'agreement with ar',
            'common prefix (tokens)', 'agreement with max_tokens=1', 'tokens/s',
            'speedup vs ar']
  nll_table = common.markdown_table(
      ['model, held-out windows', 'NLL per token (nats)', 'tokens per step'],
      [['base, AR', base_nll, 1.0], ['HAMburger, one-token steps (its AR)', ham_single, 1.0],
       [f'HAMburger, steps by p >= {tau} (k = {k})', ham_nll, per_step]])
  body = (
      f'Base `{args.base}` ({cfg.num_layers} layers, d_model {cfg.d_model}, '
      f'{sum(x.size for x in jax.tree.leaves(base.params)) / 1e6:.2f}M params); HAMburger '
      f'`{args.run}`: the same base fine-tuned {ham.step} steps with the compositional '
      f'embedder ({ham_lib.embedder_kind(hb)}) and a one-layer micro decoder (steps of at '
      f'most k = {k} tokens, training '
      f'segmentation p >= {tau}). Generation: {rows_n} held-out prompts of '
      f'{args.prompt_chars} characters, {args.new_tokens} new tokens, greedy, batches of '
      f'{args.batch} (ragged), prefill included; tokens/s is the fastest of {args.repeats} '
      'passes alternated with AR\'s on a shared 2-core CPU (other jobs running): read the '
      'ratio, not the numbers. The tiny model on a CPU is not memory-bound, so the speedup '
      'says what the loop costs here, not what it would give a large model. Lossy: '
      '`hamburger` trusts its micro decoder\'s tokens; quality is the output\'s perplexity '
      'under the base and its agreement with `ar` (greedy `ar` takes the base\'s most likely '
      'token at every position), and its agreement with the fine-tuned '
      'model\'s own one-token steps (`max_tokens=1`, its plain AR: the fine-tune alone moves '
      'the base\'s greedy output). One run, one seed.\n\n'
      + common.markdown_table(header, table) + '\n\n'
      f'Held-out NLL, teacher-forced on {len(seqs)} windows of {args.seq_tokens} tokens '
      '(the first token of each window unscored):\n\n' + nll_table + '\n')
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  pts = sorted(payload[1:], key=lambda r: r['tokens_per_forward'])
  ax.plot([r['tokens_per_forward'] for r in pts], [r['ppl_under_base'] for r in pts], 'o-',
          label='hamburger (max_tokens=1 and each threshold)')
  ax.plot([payload[0]['tokens_per_forward']], [payload[0]['ppl_under_base']], 'k*', ms=10,
          label='ar (base)')
  ax.set_xlabel('tokens per base forward')
  ax.set_ylabel('output perplexity under the base')
  ax.legend()
  fig.tight_layout()
  fig.savefig(f'{common.RESULTS_DIR}/{args.out}.png', dpi=120)
  body += f'\n![tokens per forward vs quality]({args.out}.png)\n'
  common.write_json(args.out, {
      'rows': payload, 'heldout': {'base_ar_nll': base_nll, 'ham_nll': ham_nll,
                                   'ham_one_token_nll': ham_single, 'ham_ar_nll': ham_ar,
                                   'tokens_per_step': per_step, 'docs': len(seqs)},
      'args': vars(args)})
  path = common.write_results(args.out, 'HAMburger: several tokens per base forward and '
                              'per KV entry, against AR of equal size', body)
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
