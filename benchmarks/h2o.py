"""H2O heavy-hitter KV eviction against its budget: perplexity and agreement with the full cache.

  python -m benchmarks.h2o --workdir=runs/tiny

Three policies per budget (`decoding/h2o.py`; lossy): H2O with half the budget kept for the
newest tokens and half for heavy hitters (the paper's split), H2O with a quarter for the
newest, and a sliding window (every slot for the newest tokens: recent = budget - 1) as the
baseline that ignores attention. Measured:

  teacher-forced    held-out documents: the first `--prompt_tokens` tokens are prefilled, then
                    every later token is fed one at a time through the evicting cache (as
                    decoding does) and scored: perplexity and next-token accuracy.
  generation        greedy from held-out prompts: agreement with full-cache AR (position by
                    position, and the mean common prefix), and tokens/s beside `ar` in the
                    same run (noisy on a shared CPU; the policy computes attention
                    probabilities a second time but over fewer slots).

Writes benchmarks/results/h2o.md (+ h2o.png). One run, one seed, greedy, on the `tiny` run.
The defaults stay inside its 128-token training window (sequences of 128 tokens; prompts of
48 characters, about 49 tokens, plus 79 new ones): past it the full cache itself degrades and
a short window can look better than the full cache.
"""

from __future__ import annotations

import argparse
import functools
import math

import jax
import jax.numpy as jnp

from benchmarks import common
from benchmarks import harness
from decoding import SamplingConfig
from decoding import h2o
from workbench import Workbench


def policies(budgets, full):
  out = [('full cache', full, 0)]
  for b in budgets:
    out.append(('H2O (half recent)', b, b // 2))
    out.append(('H2O (quarter recent)', b, b // 4))
    out.append(('sliding window', b, b - 1))
  return out


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _teacher_forced(model, params, tokens_BxT, prompt, budget, recent):
  B, T = tokens_BxT.shape
  policy = h2o.H2OPolicy(budget, recent)
  logits_BxV, h = policy.prefill(model, params, tokens_BxT[:, :prompt],
                                 jnp.full((B,), prompt, jnp.int32), T)

  def step(h, t):
    tok = jax.lax.dynamic_index_in_dim(tokens_BxT, t, 1)
    out, h = policy.forward(model, params, tok, jnp.full((B, 1), t, jnp.int32), h)
    return h, out.logits_BxTxV[:, 0]

  _, logits_NxBxV = jax.lax.scan(step, h, jnp.arange(prompt, T - 1))
  logits_BxNxV = jnp.concatenate([logits_BxV[:, None], jnp.swapaxes(logits_NxBxV, 0, 1)], 1)
  targets_BxN = tokens_BxT[:, prompt:]
  logp = jax.nn.log_softmax(logits_BxNxV.astype(jnp.float32), -1)
  nll = -jnp.take_along_axis(logp, targets_BxN[..., None], -1)[..., 0]
  hits = jnp.argmax(logits_BxNxV, -1) == targets_BxN
  return jnp.mean(nll), jnp.mean(hits)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--workdir', default='runs/tiny')
  ap.add_argument('--docs', type=int, default=16)
  ap.add_argument('--seq_tokens', type=int, default=128)
  ap.add_argument('--prompt_tokens', type=int, default=16)
  ap.add_argument('--gen_prompt_chars', type=int, default=48)
  ap.add_argument('--new_tokens', type=int, default=79)
  ap.add_argument('--budgets', default='8,16,32,64')
  args = ap.parse_args()
  bench = Workbench.load(args.workdir)
  model, params = bench.model, bench.params
  budgets = [int(b) for b in args.budgets.split(',')]
  T = args.seq_tokens
  texts = bench.heldout_prompts(args.docs, chars=4 * T)[0]
  seqs = [bench.tokenizer.encode_prompt(t)[:T] for t in texts]
  seqs = [s for s in seqs if len(s) == T]
  tokens = jnp.asarray(seqs, jnp.int32)
  _, gen_prompts = bench.heldout_prompts(args.docs, chars=args.gen_prompt_chars)
  full = max(T, max(map(len, gen_prompts)) + args.new_tokens) + 1
  specs = [('ar', 'full cache', full, 0)] + [
      (f'ar:h2o={b}:recent={r}', name, b, r) for name, b, r in policies(budgets, full)[1:]]
  results = bench.run(bench.decoders([s for s, *_ in specs], SamplingConfig()), gen_prompts,
                      max_new_tokens=args.new_tokens)
  by_spec = dict(zip([s for s, *_ in specs], results.values()))
  ref_rows, ref_stats = by_spec['ar']
  rows_out, plot = [], {}
  for spec, name, budget, recent in specs:
    nll, acc = _teacher_forced(model, params, tokens, args.prompt_tokens,
                               budget if spec != 'ar' else full, recent)
    rows, stats = by_spec[spec]
    agree, prefix = harness.agreement(ref_rows, rows)
    ppl = math.exp(float(nll))
    rows_out.append([name, budget if spec != 'ar' else f'{full} (all)', recent,
                     min(budget, full) / full, ppl,
                     float(acc), agree, prefix, stats.tokens_per_s,
                     stats.tokens_per_s / ref_stats.tokens_per_s])
    print(rows_out[-1], flush=True)
    if spec != 'ar':
      plot.setdefault(name, []).append((budget, ppl))
  header = ['policy', 'budget (slots)', 'recent', 'cache slots / full',
            'held-out ppl (teacher-forced)', 'held-out acc', 'agreement with full-cache AR',
            'common prefix (tokens)', 'tokens/s', 'vs AR']
  body = (f'`{args.workdir}` ({model.cfg.num_layers} layers, trained on 128-token windows). '
          f'Teacher-forced: {len(seqs)} held-out documents, first {T} tokens, '
          f'{args.prompt_tokens} prefilled, the other {T - args.prompt_tokens} fed one at a '
          f'time through the cache. Generation: {len(gen_prompts)} held-out prompts of '
          f'{args.gen_prompt_chars} characters, {args.new_tokens} new tokens, greedy, one batch. '
          'Budgets count the current token; recent = the newest positions never evicted. '
          'Lossy: fewer slots than tokens evict. "cache slots / full": the memory the policy '
          'keeps (the full cache holds prompt + new tokens). One run, one seed; tokens/s on a '
          'shared, busy CPU are noisy (the policy computes attention probabilities a second '
          'time, over fewer slots): read them as no measured slowdown, not as a speedup.\n\n'
          + common.markdown_table(header, rows_out) + '\n')
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, pts in plot.items():
    ax.plot([p[0] for p in pts], [p[1] for p in pts], 'o-', label=name)
  ax.axhline(rows_out[0][4], color='k', ls=':', label='full cache')
  ax.set_xscale('log', base=2)
  ax.set_yscale('log')
  ax.set_xlabel('cache budget (slots)')
  ax.set_ylabel('held-out perplexity (teacher-forced)')
  ax.legend()
  fig.tight_layout()
  fig.savefig(f'{common.RESULTS_DIR}/h2o.png', dpi=120)
  body += '\n![perplexity vs budget](h2o.png)\n'
  path = common.write_results('h2o', 'H2O heavy-hitter KV eviction: quality against budget',
                              body)
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
