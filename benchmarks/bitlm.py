"""BitLM against the AR model of equal size: tokens per forward, KV entries, quality, speed.

  python train.py --config=configs/lm.py:tiny --workdir=runs/tiny            # the AR baseline
  python train.py --config=configs/bitlm.py:tiny --workdir=runs/bitlm_tiny   # same data, steps
  python -m benchmarks.bitlm --bitlm=runs/bitlm_tiny --ar=runs/tiny

Both runs have the same backbone (configs/lm.py:tiny) trained on the same corpus for the same
steps; BitLM adds its bit head (models/bitlm.py). Measured in one run:

  held-out quality  `--docs` held-out documents of `--seq_tokens` + 1 tokens: AR's next-token
                    NLL against BitLM's diffusion bound (training/objectives/bitlm.py) on
                    disjoint blocks of K, `--mc` noise draws each (an upper bound on BitLM's
                    NLL; mean and standard error), in nats and bits per token.
  generation        `--prompts` held-out prompts of `--prompt_chars` characters, `--new_tokens`
                    new tokens, greedy and temperature 1: tokens per backbone forward (τ), head
                    calls per token, KV entries per token and layer, tokens/s (passes of all
                    decoders run in turn, `--repeats` rounds; median pass) and the speedup
                    over AR with the same sampling (median over rounds of the ratio within
                    a round), and the NLL of the generated tokens under the AR
                    model (how plausible the AR model finds them).

Writes benchmarks/results/bitlm_cpu.{md,json}. One run, one seed, on a shared 2-core CPU where
the tiny model is not memory-bound (a forward over 4 tokens costs more than over 1).
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
from decoding import SamplingConfig
from models import bitlm as bitlm_lib
from training.objectives import bitlm as objective_lib
from workbench import Workbench


@functools.partial(jax.jit, static_argnums=(0,))
def ar_nll(model, params, tokens_BxT1):
  """[B, T] next-token NLL (nats) of tokens[:, 1:] under an AR model."""
  logits = model.apply({'params': params}, tokens_BxT1[:, :-1]).logits_BxTxV
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  return -jnp.take_along_axis(logp, tokens_BxT1[:, 1:, None], -1)[..., 0]


@functools.partial(jax.jit, static_argnums=(0, 4))
def bitlm_bound(model, params, head, tokens_BxT1, samples, rng):
  """[samples] the per-token diffusion bound (nats) of tokens[:, 1:] on disjoint blocks of K
  (starts 0, K, 2K, ...; T a multiple of K), one noise draw per sample."""
  K, nb = bitlm_lib.head_shape(head).block, bitlm_lib.head_shape(head).bits
  h = model.apply({'params': params}, tokens_BxT1[:, :-1]).last_hidden_BxTxD
  B, T = tokens_BxT1.shape[0], tokens_BxT1.shape[1] - 1
  n = T // K
  cond = h[:, ::K][:, :n].reshape(B * n, -1)
  bits = bitlm_lib.encode_bits(tokens_BxT1[:, 1:1 + n * K].reshape(B * n, K), nb)

  def one(key):
    r, masked = objective_lib.draw_noise(key, bits.shape, 1e-3)
    logits = bitlm_lib.head_logits(head, cond, jnp.where(masked, bitlm_lib.MASKED, bits))
    return jnp.mean(objective_lib.block_bound(logits, bits, masked, r))

  return jax.lax.map(one, jax.random.split(rng, samples))


def generated_nll(ar_bench, prompts, rows) -> float:
  """Mean NLL (nats) per generated token under the AR model, prompt as context."""
  total, count = 0.0, 0
  for p, toks in zip(prompts, rows):
    if not toks:
      continue
    seq = jnp.asarray([list(p) + list(toks)], jnp.int32)
    nll = np.asarray(ar_nll(ar_bench.model, ar_bench.params, seq))[0, len(p) - 1:]
    total, count = total + float(nll.sum()), count + len(toks)
  return total / max(count, 1)


def round_times(progs, batches, repeats: int) -> tuple[list[np.ndarray], list]:
  """Wall times [repeats] of one pass of each (compiled fns, params) program, the programs
  run in turn in every round (after one warm-up pass each), and each one's last results. A
  speedup is then read per round (both passes under the same load) and its median kept: on a
  shared machine the load moves between rounds more than within one."""
  for fns, pp in progs:
    harness.timed_pass(fns, pp, batches)
  times = [[] for _ in progs]
  results = [None] * len(progs)
  for _ in range(repeats):
    for i, (fns, pp) in enumerate(progs):
      t, results[i] = harness.timed_pass(fns, pp, batches)
      times[i].append(t)
  return [np.asarray(t) for t in times], results


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--bitlm', default='runs/bitlm_tiny')
  ap.add_argument('--ar', default='runs/tiny')
  ap.add_argument('--docs', type=int, default=16)
  ap.add_argument('--seq_tokens', type=int, default=128)
  ap.add_argument('--mc', type=int, default=16)
  ap.add_argument('--prompts', type=int, default=16)
  ap.add_argument('--prompt_chars', type=int, default=64)
  ap.add_argument('--new_tokens', type=int, default=64)
  ap.add_argument('--steps', default='4,9,36', help='head calls per block to measure (greedy)')
  ap.add_argument('--repeats', type=int, default=9)
  args = ap.parse_args()
  bit, ar = Workbench.load(args.bitlm), Workbench.load(args.ar)
  if bitlm_lib.BITLM not in bit.extras:
    raise ValueError(f'{args.bitlm} holds no BitLM head: train it with configs/bitlm.py.')
  if bit.tokenizer.vocab_size != ar.tokenizer.vocab_size:
    raise ValueError('The BitLM and AR runs use different vocabularies.')
  head = bit.extras[bitlm_lib.BITLM]
  shape = bitlm_lib.head_shape(head)
  K, nb = shape.block, shape.bits
  n_params = lambda tree: sum(int(x.size) for x in jax.tree.leaves(tree))

  # Held-out quality, teacher-forced.
  T = args.seq_tokens
  texts = ar.heldout_prompts(args.docs, chars=6 * T)[0]
  seqs = [s[:T + 1] for s in (ar.tokenizer.encode_prompt(t) for t in texts) if len(s) > T]
  tokens = jnp.asarray(seqs, jnp.int32)
  nll_ar = float(np.mean(np.asarray(ar_nll(ar.model, ar.params, tokens))))
  bounds = np.asarray(bitlm_bound(bit.model, bit.params, head, tokens, args.mc,
                                  jax.random.key(0)))
  bound, bound_se = float(bounds.mean()), float(bounds.std(ddof=1) / math.sqrt(len(bounds)))
  print(f'held-out: AR nll {nll_ar:.3f}, BitLM bound {bound:.3f} +- {bound_se:.3f}', flush=True)

  # Generation.
  _, prompts = ar.heldout_prompts(args.prompts, chars=args.prompt_chars)
  tok = ar.tokenizer
  cache = harness.cache_slots(prompts, args.new_tokens + K)
  kw = dict(max_new=args.new_tokens, cache_size=cache, eos_id=tok.eos_id, pad_id=tok.pad_id)
  batches = harness.make_batches(prompts, len(prompts), tok.pad_id)
  greedy, sample = SamplingConfig(temperature=0.0), SamplingConfig(temperature=1.0)
  configs = [('ar', ar, 'ar', greedy)]
  configs += [(f'bitlm, steps={s}', bit, f'bitlm:steps={s}', greedy)
              for s in map(int, args.steps.split(','))]
  configs += [('ar', ar, 'ar', sample), (f'bitlm, steps={nb}', bit, f'bitlm:steps={nb}', sample)]
  progs, compile_s = [], []
  for _, bench, spec, sampling in configs:
    dec = bench.decoder(spec, sampling)
    models, params = bench.models_for(dec)
    fns, c = harness.compile_decoder(dec, models, params, batches, **kw)
    progs.append((fns, params))
    compile_s.append(c)
  walls, results = round_times(progs, batches, args.repeats)
  rows, table = [], []
  ar_walls = {}
  for (label, bench, spec, sampling), wall, res, c in zip(configs, walls, results, compile_s):
    r = harness.summarise(res, float(np.median(wall)), c)
    temp = sampling.temperature
    if label == 'ar':
      ar_walls[temp] = wall
    nll = generated_nll(ar, prompts, r['tokens'])
    speedup = float(np.median(ar_walls[temp] / wall))  # per round, then the median
    row = {'decoder': label, 'spec': spec, 'temperature': temp, 'tau': r['tau'],
           'head_calls_per_token': r['other_forwards'] / r['generated'],
           'kv_entries_per_token_per_layer': 1.0, 'tokens_per_s': r['tokens_per_s'],
           'speedup': speedup, 'generated_nll_under_ar': nll, 'generated': r['generated'],
           'compile_s': c}
    rows.append(row)
    flag = ' (!)' if harness.implausible(row) else ''
    table.append([label, 'greedy' if temp == 0 else f'T = {temp:g}', r['tau'],
                  row['head_calls_per_token'], 1, r['tokens_per_s'], f'{speedup:.3g}{flag}',
                  nll])
    print(table[-1], flush=True)
  held = [['AR (`runs/tiny`)', n_params(ar.params), 'NLL', nll_ar, nll_ar / math.log(2)],
          ['BitLM', n_params(bit.params) + n_params(head), f'diffusion bound (± {bound_se:.2g})',
           bound, bound / math.log(2)]]
  meta = {'bitlm_run': args.bitlm, 'ar_run': args.ar, 'block': K, 'bits': nb,
          'vocab_size': int(bit.model.cfg.vocab_size), 'docs': len(seqs), 'seq_tokens': T,
          'mc_samples': args.mc, 'heldout_ar_nll': nll_ar, 'heldout_bitlm_bound': bound,
          'heldout_bitlm_bound_se': bound_se, 'ar_params': n_params(ar.params),
          'bitlm_backbone_params': n_params(bit.params), 'bitlm_head_params': n_params(head),
          'prompts': len(prompts), 'prompt_chars': args.prompt_chars,
          'new_tokens': args.new_tokens, 'repeats': args.repeats,
          'ar_step': ar.target.step, 'bitlm_step': bit.target.step}
  common.write_json('bitlm_cpu', {**meta, 'rows': rows})
  body = (f'BitLM (`{args.bitlm}`, step {bit.target.step}: blocks of K = {K} tokens, {nb} bits '
          f'per token, vocabulary {bit.model.cfg.vocab_size}) against the AR model of the same '
          f'backbone (`{args.ar}`, step {ar.target.step}), both `tiny` trained on the same '
          'corpus for the same steps. Lossy: BitLM is a different model, not a decoder of '
          "the AR model's distribution.\n\n"
          f'Held-out quality: {len(seqs)} held-out documents, {T} scored tokens each. BitLM\'s '
          f'figure is its diffusion bound on disjoint blocks ({args.mc} noise draws; an upper '
          'bound on its NLL; ± one standard error over the draws).\n\n'
          + common.markdown_table(['model', 'params', 'measure', 'nats/token', 'bits/token'],
                                  held) + '\n\n'
          f'Generation: {len(prompts)} held-out prompts of {args.prompt_chars} characters, '
          f'{args.new_tokens} new tokens, one batch; τ = tokens per backbone forward (the '
          'prefill counts one, as for AR); head calls per token are the bit head\'s (a small '
          'network, not the backbone); KV entries per token and layer by construction (BitLM '
          "keeps one position per token). tokens/s: median pass of "
          f'{args.repeats} rounds (every decoder once per round, in turn); speedup against AR '
          'with the same sampling: median over rounds of the ratio within a round. NLL '
          'under AR: nats per generated token under the AR model. CPU `tiny` is not '
          'memory-bound (a forward over K tokens costs more than over one), so the speedup '
          'stays below τ; one run, one seed, shared 2-core CPU: read ratios, not absolute '
          'tokens/s.\n\n'
          + common.markdown_table(['decoder', 'sampling', 'τ (tokens per backbone forward)',
                                   'head calls per token', 'KV entries per token per layer',
                                   'tokens/s', 'speedup vs AR', 'NLL under AR (nats/token)'],
                                  table) + '\n')
  path = common.write_results('bitlm_cpu', 'BitLM against AR of equal size (CPU, tiny)', body)
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
