"""Every verification rule under matched node budgets: tau per verifier x budget.

  python -m benchmarks.verifiers                                   # CPU, ~15 min: random pair
  python -m benchmarks.verifiers --prompts=8 --max_new_tokens=8 --budgets=4 --out=t   # smoke
  python -m benchmarks.verifiers --target=runs/spec/target --draft=runs/spec/draft   # trained

MEASURES TAU (tokens per target forward, the decoders' own statistic), NOT SPEED: the
verifiers differ in how many drafted tokens they accept, and this table compares that alone,
as the Traversal Verification and DDTE papers do. For every node budget N (drafted nodes) the
same target/draft pair decodes the same prompts with the same seed under:

  chain iid              gamma = N drafts, Leviathan/Chen (SpecInfer on a chain)
  chain traversal        the same chain under Traversal Verification: block verification
                         (Sun et al. 2024), optimal among chain verifiers
  static tree iid        best-first tree of N nodes, depth <= N/2, children i.i.d.; SpecInfer
  static tree wor        the same tree, children without replacement; Sequoia / RSD-C
  static tree traversal  the same tree, children i.i.d.; Traversal Verification
  kseq multi-draft       2 drafts of N/2 tokens (branching '2,1,...'); SpecTr K-SEQ
  delayed traversal      one path of N/4 drafts, then i.i.d. rollouts to depth N/2 (DDTE,
                         `trees.delayed`), Traversal Verification
  delayed iid            the same delayed tree under SpecInfer's rule
  static tree typical (lossy)  the static tree under Medusa's typical acceptance
  chain typical (lossy)  the chain under typical acceptance

The lossy rules' tau is not comparable alone: they accept what the target finds likely
rather than what it would sample. Every row therefore also gives the mean log-probability of
the tokens it emitted under the target's sampling distribution p (teacher-forced; for a
lossless rule its expectation is -H of the sampling process, the same for every lossless row
up to noise, so a lossy rule's excess over them is how far its text leans to the likelier
tokens) and the share of emitted tokens below the typical threshold (0 for typical
acceptance by construction).

Default pair (no training needed, reproducible): a random 2-layer target (vocab 128,
init_std 0.3) and a draft that is its perturbed copy (every weight + `noise` x its tensor's
std of Gaussian noise). `--target/--draft` use trained workdirs and held-out prompts instead.
tau is the ratio of generated tokens to target forwards over all rows (prefill counted as in
`RunStats.tau`); its standard error is the ratio estimator's over rows. 'traversal - iid' is
the paired per-row difference on the same static tree, and on the same chain (same prompts,
same row keys). Writes
benchmarks/results/verifiers_cpu.md and .json (rows: temperature, top_k, budget, verifier,
tau, se, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from benchmarks import common
from benchmarks import forward_cost
from decoding import Models, SamplingConfig, registry, run_decoder
from models import Transformer, init_params
from models import config as config_lib

VERIFIERS = ('chain iid', 'chain traversal', 'static tree iid', 'static tree wor',
             'static tree traversal', 'kseq multi-draft', 'delayed traversal', 'delayed iid',
             'static tree typical (lossy)', 'chain typical (lossy)')
TYPICAL = (0.09, 0.3)  # the decoders' default (epsilon, alpha)


def settings(verifier: str, budget: int) -> dict:
  """The `speculative` decoder settings of a verifier at `budget` drafted nodes."""
  depth = max(1, budget // 2)
  if verifier == 'chain iid':
    return dict(gamma=budget, verifier='iid')
  if verifier == 'chain traversal':
    return dict(gamma=budget, verifier='traversal')
  if verifier == 'chain typical (lossy)':
    return dict(gamma=budget, verifier='typical')
  if verifier == 'static tree typical (lossy)':
    return dict(tree='static', tree_nodes=budget, gamma=depth, verifier='typical')
  if verifier.startswith('static tree'):
    return dict(tree='static', tree_nodes=budget, gamma=depth, verifier=verifier.split()[-1])
  if verifier == 'kseq multi-draft':
    k = budget // depth
    return dict(tree='static', branching=','.join([str(k)] + ['1'] * (depth - 1)),
                verifier='kseq')
  if verifier.startswith('delayed'):
    return dict(tree='static', tree_nodes=budget, gamma=depth, delay=max(1, budget // 4),
                verifier=verifier.split()[-1])
  raise ValueError(f'Unknown verifier {verifier!r}; choose from {VERIFIERS}.')


def shape(dec) -> str:
  """Nodes per depth of a decoder's tree, e.g. '1,2,3,2' (root excluded)."""
  tpl = dec.template()
  return ','.join(str(e - s) for s, e in tpl.levels()[1:])


def random_pair(vocab: int, init_std: float, noise: float, seed: int):
  """A random target and its perturbed copy as draft: (models, params)."""
  cfg = config_lib.ModelConfig(vocab_size=vocab, d_model=32, num_layers=2, num_heads=4,
                               num_kv_heads=2, head_dim=8, mlp_dim=64, max_seq_len=256,
                               init_std=init_std)
  model = Transformer(cfg)
  tp = init_params(model, jax.random.key(seed))
  leaves, tdef = jax.tree.flatten(tp)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  dp = tdef.unflatten([x + noise * x.std() * jax.random.normal(k, x.shape, x.dtype)
                       for x, k in zip(leaves, keys)])
  return Models(model, extras=(('draft', model),)), {'target': tp, 'draft': dp}


def load(args):
  """(models, params, prompts, pad_id, pair description)."""
  if args.target:
    from workdir import loading  # pylint: disable=g-import-not-at-top
    import workbench  # pylint: disable=g-import-not-at-top
    target, draft = loading.load_model(args.target), loading.load_model(args.draft)
    prompts = workbench.read_prompts(target.tokenizer, prompt=None, prompts_file=None,
                                     heldout=args.prompts, prompt_chars=args.prompt_tokens,
                                     data_config=target.config['data'])
    return (Models(target.model, extras=(('draft', draft.model),)),
            {'target': target.params, 'draft': draft.params}, prompts,
            target.tokenizer.pad_id, f'trained target {args.target}, draft {args.draft}')
  models, params = random_pair(args.vocab, args.init_std, args.noise, args.seed)
  rng = np.random.default_rng(args.seed)
  prompts = [[int(t) for t in rng.integers(1, args.vocab, size=rng.integers(4, 17))]
             for _ in range(args.prompts)]
  return models, params, prompts, 0, (
      f'random target (vocab {args.vocab}, d_model 32, 2 layers, init_std {args.init_std}, '
      f'seed {args.seed}); draft = the target + {args.noise} x std Gaussian noise per tensor')


def tau_se(tokens: np.ndarray, forwards: np.ndarray) -> tuple[float, float]:
  """Ratio estimator sum(tokens) / sum(forwards) and its standard error over rows."""
  tau = tokens.sum() / forwards.sum()
  n = len(tokens)
  if n < 2:
    return float(tau), float('nan')
  resid = tokens - tau * forwards
  return float(tau), float(np.sqrt(resid.var(ddof=1) / n) / forwards.mean())


def emitted_logp(models, params, prompts, out, sampling, pad_id: int) -> tuple[float, float]:
  """(mean log p, share below the typical threshold) of the emitted tokens, p the target's
  distribution after `sampling`, teacher-forced over prompt + output."""
  from decoding import sampling as sampling_lib  # pylint: disable=g-import-not-at-top
  from decoding.speculative import verify  # pylint: disable=g-import-not-at-top
  seqs = [list(p) + r.tokens for p, r in zip(prompts, out)]
  L = max(map(len, seqs))
  arr = np.full((len(seqs), L), pad_id, np.int32)
  for i, s in enumerate(seqs):
    arr[i, :len(s)] = s

  @jax.jit
  def score(tokens):
    logp = sampling_lib.log_probs(models.target.apply({'params': params['target']},
                                                      tokens).logits_BxTxV, sampling)
    thr = verify.typical_thresholds(logp, *TYPICAL)
    nxt = jax.numpy.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
    return nxt, thr[:, :-1]
  lp, thr = (np.asarray(x) for x in score(arr))
  total, below, n = 0.0, 0, 0
  for i, (p, r) in enumerate(zip(prompts, out)):
    sl = slice(len(p) - 1, len(p) - 1 + len(r.tokens))
    total += float(lp[i, sl].sum())
    below += int((np.exp(lp[i, sl]) < thr[i, sl] * (1 - 1e-4)).sum())
    n += len(r.tokens)
  return total / max(n, 1), below / max(n, 1)


def measure(args, loaded, temperature: float, top_k: int) -> list[dict]:
  """One row per (budget, verifier) at one sampling setting, plus traversal - iid (static
  tree, chain)."""
  models, params, prompts, pad_id, pair = loaded
  cache = int(-(-(max(map(len, prompts)) + args.max_new_tokens + 2 * max(args.budgets) + 8)
                // 32) * 32)
  rows = []
  sampling = SamplingConfig(temperature=temperature, top_k=top_k)
  for budget in args.budgets:
    per_row = {}
    for name in args.verifiers:
      dec = registry.build('speculative', dict(settings(name, budget), draft_workdir='x'),
                           sampling)
      t0 = time.perf_counter()
      out, stats = run_decoder(dec, models, params, prompts,
                               max_new_tokens=args.max_new_tokens, cache_size=cache,
                               eos_id=-1, pad_id=pad_id, seed=args.seed,
                               batch_size=args.batch)
      tokens = np.asarray([len(r.tokens) for r in out], np.float64)
      forwards = np.asarray([r.target_forwards for r in out], np.float64)
      per_row[name] = tokens / forwards
      tau, se = tau_se(tokens, forwards)
      assert abs(tau - stats.tau) < 1e-9, (tau, stats.tau)
      logp, below = emitted_logp(models, params, prompts, out, sampling, pad_id)
      rows.append(dict(pair=pair, temperature=temperature, top_k=top_k, budget=budget,
                       verifier=name, shape=shape(dec), tau=tau, se=se, rows=len(out),
                       max_new_tokens=args.max_new_tokens, seconds=time.perf_counter() - t0,
                       lossless=stats.lossless, mean_logp=logp, below_typical=below))
      print(f'T={temperature} top_k={top_k} N={budget} {name:22s} [{shape(dec)}] '
            f'tau {tau:.3f} +- {se:.3f}, mean log p {logp:.3f}, below typical {below:.3f} '
            f'({time.perf_counter() - t0:.0f} s)', flush=True)
    for of in ('static tree', 'chain'):
      if f'{of} traversal' not in per_row or f'{of} iid' not in per_row:
        continue
      diff = per_row[f'{of} traversal'] - per_row[f'{of} iid']
      rows.append(dict(pair=pair, temperature=temperature, top_k=top_k, budget=budget,
                       verifier=f'traversal - iid (paired, {of})', shape='',
                       tau=float(diff.mean()), se=float(diff.std(ddof=1)
                                                        / np.sqrt(len(diff))),
                       rows=len(diff), max_new_tokens=args.max_new_tokens, seconds=0.0))
  return rows


def report(rows: list[dict], name: str) -> str:
  samplings = list(dict.fromkeys((r['temperature'], r['top_k']) for r in rows))
  budgets = sorted({r['budget'] for r in rows})
  body = [
      'THIS TABLE MEASURES τ (tokens per target forward, bonus token and prefill counted, '
      'the decoders\' own statistic), NOT SPEED: it compares how many drafted tokens each '
      'verification rule accepts at a matched budget of drafted nodes N, on the '
      'same target/draft pair, prompts and seed. Entries: τ ± its standard error over rows '
      '(ratio estimator), and the tree shape (drafted nodes per depth). Every tree has depth '
      'N/2 (the chain N); see the docstring of benchmarks/verifiers.py for each setting. '
      'The rules marked lossy (typical acceptance) do not sample the target\'s distribution: '
      'the second table of each setting gives, per row, the mean log-probability of the '
      'emitted tokens under the target\'s sampling distribution (the lossless rows agree up '
      'to noise; a higher value leans to likelier tokens) and the share of emitted tokens '
      'below the typical threshold.\n',
      f'- pair: {rows[0]["pair"]}',
      f'- rows: {rows[0]["rows"]} prompts x {rows[0]["max_new_tokens"]} new tokens\n']
  for temperature, top_k in samplings:
    sel = [r for r in rows if (r['temperature'], r['top_k']) == (temperature, top_k)]
    names = list(dict.fromkeys(r['verifier'] for r in sel))
    table = []
    for v in names:
      line = [v]
      for n in budgets:
        hit = [r for r in sel if r['verifier'] == v and r['budget'] == n]
        if not hit:
          line.append('-')
          continue
        r = hit[0]
        sign = '+' if v.startswith('traversal -') and r['tau'] >= 0 else ''
        cell = f"{sign}{r['tau']:.3f} ± {r['se']:.3f}"
        line.append(cell + (f" [{r['shape']}]" if r['shape'] else ''))
      table.append(line)
    topk = f', top-k {top_k}' if top_k else ''
    body += [f'### Temperature {temperature:g}{topk}\n',
             common.markdown_table(['verifier'] + [f'τ, N = {n}' for n in budgets], table),
             '']
    quality = []
    for v in names:
      hit = {r['budget']: r for r in sel if r['verifier'] == v and 'mean_logp' in r}
      if hit:
        quality.append([v] + [f"{hit[n]['mean_logp']:.3f} / {hit[n]['below_typical']:.3f}"
                              if n in hit else '-' for n in budgets])
    if quality:
      body += ['Mean log p of the emitted tokens / share below the typical threshold:\n',
               common.markdown_table(['verifier'] + [f'N = {n}' for n in budgets], quality),
               '']
  return common.write_results(name, 'Verification rules under matched node budgets (τ)',
                              '\n'.join(body))


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--budgets', default='4,8,16', help='drafted nodes per step')
  ap.add_argument('--verifiers', default=','.join(VERIFIERS))
  ap.add_argument('--samplings', default='1,0.7/8',
                  help="temperature[/top_k] list, e.g. '1,0.7/8'")
  ap.add_argument('--prompts', type=int, default=256)
  ap.add_argument('--prompt_tokens', type=int, default=64, help='trained pair: prompt chars')
  ap.add_argument('--max_new_tokens', type=int, default=32)
  ap.add_argument('--batch', type=int, default=0, help='rows per batch (0: all)')
  ap.add_argument('--vocab', type=int, default=128)
  ap.add_argument('--init_std', type=float, default=0.3)
  ap.add_argument('--noise', type=float, default=0.1)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--target', default='', help='trained target workdir (with --draft)')
  ap.add_argument('--draft', default='')
  ap.add_argument('--out', default='', help='results name (default verifiers_<device>)')
  args = ap.parse_args(argv)
  if bool(args.target) != bool(args.draft):
    ap.error('--target and --draft go together.')
  args.budgets = [int(b) for b in args.budgets.split(',')]
  args.verifiers = args.verifiers.split(',')
  for v in args.verifiers:
    settings(v, 4)  # unknown names fail before any work
  args.samplings = [(float(s.split('/')[0]), int(s.split('/')[1]) if '/' in s else 0)
                    for s in args.samplings.split(',')]
  args.batch = args.batch or None
  args.out = args.out or f'verifiers_{forward_cost.device_tag()}'
  return args


def main(argv=None) -> str:
  args = parse_args(argv)
  name = args.out
  loaded, rows = load(args), []
  for temperature, top_k in args.samplings:  # written after each: a cut run keeps them
    rows += measure(args, loaded, temperature, top_k)
    os.makedirs(common.RESULTS_DIR, exist_ok=True)
    with open(os.path.join(common.RESULTS_DIR, f'{name}.json'), 'w') as f:
      json.dump({'provenance': common.provenance(), 'rows': rows}, f, indent=1)
    path = report(rows, name)
  print(path)
  return path


if __name__ == '__main__':
  main()
