"""BitLM against the AR model of equal size: tokens per forward, KV entries, quality, speed.

  python train.py --config=configs/lm.py:tiny --workdir=runs/tiny            # the AR baseline
  python train.py --config=configs/bitlm.py:tiny --workdir=runs/bitlm_tiny   # same data, steps
  python -m benchmarks.bitlm --bitlm=runs/bitlm_tiny --ar=runs/tiny
  python train.py --config=configs/bitlm.py:tiny,head=analog --workdir=runs/bitlm_analog_tiny
  python -m benchmarks.bitlm --bitlm=runs/bitlm_tiny,runs/bitlm_analog_tiny --ar=runs/tiny \
      --out=bitlm_analog_cpu                     # both heads, measured in the same rounds

The runs have the same backbone (configs/lm.py:tiny) trained on the same corpus for the same
steps; BitLM adds its bit head (models/bitlm.py, masked or analog). `--bitlm` takes one run or
several, comma-separated. Measured in one run:

  held-out quality  `--docs` held-out documents of `--seq_tokens` + 1 tokens: AR's next-token
                    NLL against BitLM's diffusion bound (training/objectives/bitlm.py) on
                    disjoint blocks of K, `--mc` noise draws each (an upper bound on BitLM's
                    NLL; mean and standard error), in nats and bits per token. An analog head
                    has no such bound: its row is its training loss on the same blocks (the
                    clean-bit cross-entropy at random noise levels), which is no NLL and does
                    not compare with AR's; the generation figures below apply to both heads.
  generation        `--prompts` held-out prompts of `--prompt_chars` characters, `--new_tokens`
                    new tokens, greedy and temperature 1: tokens per backbone forward (τ), head
                    calls per token, KV entries per token and layer, tokens/s (passes of all
                    decoders run in turn, `--repeats` rounds; median pass) and the speedup
                    over AR with the same sampling (median over rounds of the ratio within
                    a round), the NLL of the generated tokens under the AR
                    model (how plausible the AR model finds them: runs of one character
                    score well, so read it with the next column) and the share of distinct
                    4-grams in the generated text (1 = no repeats; degenerate runs are
                    near 0).

Writes benchmarks/results/<--out>.{md,json} (default bitlm_cpu; e.g. --out=bitlm_analog_cpu for
a run of `configs/bitlm.py:tiny,head=analog`). One run, one seed, on a shared 2-core CPU where
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
  (starts 0, K, 2K, ...; T a multiple of K), one noise draw per sample. An analog head: its
  training loss on the same blocks instead (not a bound). A folded backbone scores the same
  blocks: its first block holds token 0 after K - 1 pad slots, and its state at block j
  conditions block j + 1."""
  K, nb = bitlm_lib.head_shape(head).block, bitlm_lib.head_shape(head).bits
  B, T = tokens_BxT1.shape[0], tokens_BxT1.shape[1] - 1
  n = T // K
  if bitlm_lib.head_shape(head).fold:
    ids, valid = objective_lib.fold_rows(tokens_BxT1[:, :1 + n * K], jnp.full((B,), K - 1), K,
                                         num_blocks=n + 1)
    h = objective_lib.fold_hidden(model, {'model': params, bitlm_lib.BITLM: head},
                                  ids[:, :-1], valid[:, :-1])
    cond = h.reshape(B * n, -1)
  else:
    h = model.apply({'params': params}, tokens_BxT1[:, :-1]).last_hidden_BxTxD
    cond = h[:, ::K][:, :n].reshape(B * n, -1)
  bits = bitlm_lib.encode_bits(tokens_BxT1[:, 1:1 + n * K].reshape(B * n, K), nb)

  def one(key):
    if bitlm_lib.head_shape(head).kind == 'analog':  # the analog loss: no bound
      t, noise = objective_lib.draw_analog_noise(key, bits.shape)
      logits = bitlm_lib.analog_logits(head, cond, bitlm_lib.noise_bits(bits, t, noise), t)
      return jnp.mean(objective_lib.analog_block_loss(logits, bits))
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


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--bitlm', default='runs/bitlm_tiny',
                  help='BitLM run(s), comma-separated (e.g. a masked and an analog head)')
  ap.add_argument('--ar', default='runs/tiny')
  ap.add_argument('--docs', type=int, default=16)
  ap.add_argument('--seq_tokens', type=int, default=128)
  ap.add_argument('--mc', type=int, default=16)
  ap.add_argument('--prompts', type=int, default=16)
  ap.add_argument('--prompt_chars', type=int, default=64)
  ap.add_argument('--new_tokens', type=int, default=64)
  ap.add_argument('--steps', default='4,9,36', help='head calls per block to measure (greedy)')
  ap.add_argument('--repeats', type=int, default=9)
  ap.add_argument('--out', default='bitlm_cpu', help='results name under benchmarks/results/')
  args = ap.parse_args()
  ar = Workbench.load(args.ar)
  bits = []  # (run, bench, head, shape)
  for run in args.bitlm.split(','):
    bit = Workbench.load(run)
    if bitlm_lib.BITLM not in bit.extras:
      raise ValueError(f'{run} holds no BitLM head: train it with configs/bitlm.py.')
    if bit.tokenizer.vocab_size != ar.tokenizer.vocab_size:
      raise ValueError(f'{run} and {args.ar} use different vocabularies.')
    head = bit.extras[bitlm_lib.BITLM]
    bits.append((run, bit, head, bitlm_lib.head_shape(head)))
  n_params = lambda tree: sum(int(x.size) for x in jax.tree.leaves(tree))
  name = lambda shape: f'bitlm ({shape.kind}' + (', fold)' if shape.fold else ')')
  kv_per_token = lambda shape: 1 / shape.block if shape and shape.fold else 1.0
  measure = lambda shape: ('analog denoising loss (no NLL bound)' if shape.kind == 'analog'
                           else 'diffusion bound')

  # Held-out quality, teacher-forced.
  T = args.seq_tokens
  texts = ar.heldout_prompts(args.docs, chars=6 * T)[0]
  seqs = [s[:T + 1] for s in (ar.tokenizer.encode_prompt(t) for t in texts) if len(s) > T]
  tokens = jnp.asarray(seqs, jnp.int32)
  nll_ar = float(np.mean(np.asarray(ar_nll(ar.model, ar.params, tokens))))
  held = [[f'AR (`{args.ar}`)', n_params(ar.params), 'NLL', nll_ar, nll_ar / math.log(2)]]
  runs_meta = []
  for run, bit, head, shape in bits:
    vals = np.asarray(bitlm_bound(bit.model, bit.params, head, tokens, args.mc,
                                  jax.random.key(0)))
    val, se = float(vals.mean()), float(vals.std(ddof=1) / math.sqrt(len(vals)))
    print(f'held-out: AR nll {nll_ar:.3f}, {name(shape)} {measure(shape)} {val:.3f} +- {se:.3f}',
          flush=True)
    held.append([f'BitLM, {shape.kind} head{", fold" if shape.fold else ""} (`{run}`)',
                 n_params(bit.params) + n_params(head),
                 f'{measure(shape)} (± {se:.2g})', val, val / math.log(2)])
    runs_meta.append({'run': run, 'head': shape.kind, 'fold': shape.fold, 'block': shape.block,
                      'bits': shape.bits,
                      'step': bit.target.step, 'heldout_measure': measure(shape),
                      'heldout_value': val, 'heldout_se': se,
                      'backbone_params': n_params(bit.params), 'head_params': n_params(head)})

  # Generation.
  _, prompts = ar.heldout_prompts(args.prompts, chars=args.prompt_chars)
  tok = ar.tokenizer
  cache = harness.cache_slots(prompts, args.new_tokens + max(s.block for *_, s in bits))
  kw = dict(max_new=args.new_tokens, cache_size=cache, eos_id=tok.eos_id, pad_id=tok.pad_id)
  batches = harness.make_batches(prompts, len(prompts), tok.pad_id)
  greedy, sample = SamplingConfig(temperature=0.0), SamplingConfig(temperature=1.0)
  # Rows are named by head kind and backbone; by run too where two runs share those.
  labels = [name(shape) for *_, shape in bits]
  labels = [f'{lab[:-1]}; `{run}`)' if labels.count(lab) > 1 else lab
            for lab, (run, *_) in zip(labels, bits)]
  configs = [('ar', ar, 'ar', greedy, None)]
  configs += [(f'{lab}, steps={s}', bit, f'bitlm:steps={s}', greedy, shape)
              for lab, (_, bit, _, shape) in zip(labels, bits)
              for s in map(int, args.steps.split(','))]
  configs += [('ar', ar, 'ar', sample, None)]
  configs += [(f'{lab}, steps={shape.bits}', bit, f'bitlm:steps={shape.bits}', sample, shape)
              for lab, (_, bit, _, shape) in zip(labels, bits)]
  progs, compile_s = [], []
  for _, bench, spec, sampling, _ in configs:
    dec = bench.decoder(spec, sampling)
    models, params = bench.models_for(dec)
    fns, c = harness.compile_decoder(dec, models, params, batches, **kw)
    progs.append((fns, params))
    compile_s.append(c)
  walls, results = harness.round_times(progs, batches, args.repeats)
  rows, table = [], []
  ar_walls = {}
  for (label, bench, spec, sampling, shape), wall, res, c in zip(configs, walls, results,
                                                                 compile_s):
    r = harness.summarise(res, float(np.median(wall)), c)
    temp = sampling.temperature
    if label == 'ar':
      ar_walls[temp] = wall
    nll = generated_nll(ar, prompts, r['tokens'])
    speedup = float(np.median(ar_walls[temp] / wall))  # per round, then the median
    row = {'decoder': label, 'spec': spec, 'head': shape.kind if shape else None,
           'temperature': temp, 'tau': r['tau'],
           'head_calls_per_token': r['other_forwards'] / r['generated'],
           'kv_entries_per_token_per_layer': kv_per_token(shape),
           'tokens_per_s': r['tokens_per_s'],
           'speedup': speedup, 'generated_nll_under_ar': nll,
           'distinct_4grams': common.distinct_ngrams(r['tokens']), 'generated': r['generated'],
           'compile_s': c}
    rows.append(row)
    flag = ' (!)' if harness.implausible(row) else ''
    how = 'greedy' if temp == 0 else f'T = {temp:g}'
    if shape and shape.kind == 'analog':  # the analog sampler's temperature is DDIM's eta
      how = f'DDIM eta = {temp:g}' + (' (DDPM)' if temp == 1 else '')
    table.append([label, how, r['tau'], row['head_calls_per_token'],
                  f'{kv_per_token(shape):g}', r['tokens_per_s'],
                  f'{speedup:.3g}{flag}', nll, row['distinct_4grams']])
    print(table[-1], flush=True)
  meta = {'bitlm_runs': runs_meta, 'ar_run': args.ar,
          'vocab_size': int(ar.model.cfg.vocab_size), 'docs': len(seqs), 'seq_tokens': T,
          'mc_samples': args.mc, 'heldout_ar_nll': nll_ar, 'ar_params': n_params(ar.params),
          'prompts': len(prompts), 'prompt_chars': args.prompt_chars,
          'new_tokens': args.new_tokens, 'repeats': args.repeats, 'ar_step': ar.target.step}
  common.write_json(args.out, {**meta, 'rows': rows})
  kinds = {s.kind for *_, s in bits}
  described = '; '.join(f'`{run}` ({shape.kind} head, step {bit.target.step}: blocks of K = '
                        f'{shape.block} tokens, {shape.bits} bits per token'
                        + (', one backbone position per block' if shape.fold else '') + ')'
                        for run, bit, _, shape in bits)
  held_note = ''
  if 'masked' in kinds:
    held_note += ('A masked head\'s figure is its diffusion bound on disjoint blocks '
                  f'({args.mc} noise draws; an upper bound on its NLL; ± one standard error '
                  'over the draws). ')
  if 'analog' in kinds:
    held_note += ('An analog head\'s figure is its training loss on the same blocks '
                  f'({args.mc} noise draws; ± one standard error): the clean-bit cross-entropy '
                  'at uniformly random noise levels, which bounds no likelihood and compares '
                  'neither with the AR NLL nor with a bound; compare the heads by the '
                  'generation table. ')
  if any(s.fold for *_, s in bits):
    held_note += ('A folded backbone (one position per block) scores the same blocks: its '
                  'first block holds the document\'s first token after K - 1 pad slots, and '
                  'its state after block j conditions block j + 1. ')
  analog_note = ('The analog head\'s sampler is DDIM from per-row Gaussian noise over `steps` '
                 'noise levels; its temperature is DDIM\'s eta (0 deterministic given the row '
                 'keys, 1 ancestral DDPM), run beside AR greedy and AR at temperature 1. '
                 if 'analog' in kinds else '')
  body = (f'BitLM ({described}; vocabulary {ar.model.cfg.vocab_size}) against the AR model of '
          f'the same backbone (`{args.ar}`, step {ar.target.step}), all `tiny` trained on the '
          'same corpus for the same steps. Lossy: BitLM is a different model, not a decoder '
          "of the AR model's distribution.\n\n"
          f'Held-out quality: {len(seqs)} held-out documents, {T} scored tokens each. '
          f'{held_note}\n\n'
          + common.markdown_table(['model', 'params', 'measure', 'nats/token', 'bits/token'],
                                  held) + '\n\n'
          f'Generation: {len(prompts)} held-out prompts of {args.prompt_chars} characters, '
          f'{args.new_tokens} new tokens, one batch; τ = tokens per backbone forward (the '
          'prefill counts one, as for AR); head calls per token are the bit head\'s (a small '
          'network, not the backbone); KV entries per token and layer by construction (BitLM '
          'keeps one position per token, 1/K with a folded backbone: one per block). '
          f'{analog_note}tokens/s: median pass of '
          f'{args.repeats} rounds (every decoder once per round, in turn); speedup against AR '
          'with the same sampling: median over rounds of the ratio within a round. NLL '
          'under AR: nats per generated token under the AR model (a run of one repeated '
          'character scores well under it); distinct 4-grams: the share of distinct 4-grams '
          'in each row\'s generated tokens, over all rows (1 = no repeats, near 0 = '
          'degenerate runs). CPU `tiny` is not '
          'memory-bound (a forward over K tokens costs more than over one), so the speedup '
          'of the per-token backbone stays below τ; a folded backbone\'s forward reads one '
          'position per block, and its speedup stays below τ by the head\'s calls and the '
          'loop. One training run per model (its seed in the run name where a run is named '
          '`_seed1`; otherwise seed 0), shared 2-core CPU: read ratios, not absolute '
          'tokens/s.\n\n'
          + common.markdown_table(['decoder', 'sampling', 'τ (tokens per backbone forward)',
                                   'head calls per token', 'KV entries per token per layer',
                                   'tokens/s', 'speedup vs AR', 'NLL under AR (nats/token)',
                                   'distinct 4-grams'],
                                  table) + '\n')
  title = ('BitLM (per-token and folded backbones) against AR of equal size (CPU, tiny)'
           if len({s.fold for *_, s in bits}) > 1 else
           'BitLM (masked and analog-bit heads) against AR of equal size (CPU, tiny)'
           if len(kinds) > 1 else 'BitLM (analog-bit head) against AR of equal size (CPU, tiny)'
           if kinds == {'analog'} else 'BitLM against AR of equal size (CPU, tiny)')
  path = common.write_results(args.out, title, body)
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
