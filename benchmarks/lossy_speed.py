"""Speed of the lossy cheaper-step decoders where it can hold: a memory-bound target.

  python -m benchmarks.lossy_speed                      # `mem` preset, random weights (CPU)
  python -m benchmarks.lossy_speed --preset=tiny --new_tokens=32 --out=t     # smoke
  python -m benchmarks.lossy_speed --preset=base --dtype=bfloat16              # GPU (HBM-bound)

SPEED ONLY, RANDOM WEIGHTS: the outputs mean nothing; the quality of each method is measured
on trained models by its own benchmark (benchmarks/skipdecode.py, benchmarks/bitlm.py). What
this measures is what each method's step costs when the weights, not the arithmetic, bound a
forward (the `mem` preset, 126 MB of fp32 weights, four times a 32 MB last-level cache; see
benchmarks/forward_cost.py), which its tiny-model figures cannot show.

Decoders, greedy, every one timed in the same rounds (after one warm-up pass each, each round
runs every decoder once, in turn; a speedup is the median over rounds of AR's time / the
decoder's time within a round):
  ar                    the reference.
  skipdecode            SkipDecode (skip the bottom s layers for every generated token
                        after the first, which the prefill gives: `schedule=0/s`) and plain
                        early exit (`skip_from=top`, the top s layers), s in `--skips`.
                        Ideal: L / (L - s) (layers read per token).
  bitlm                 BitLM with a random head of the `tiny` shape widened to the preset
                        (K = `--block` tokens per block, `--head_steps` head calls per block):
                        per-token backbone (a forward over K positions per block) and folded
                        (one position per block, 1/K of the KV entries). Ideal: K x t_AR /
                        t_fwd, t_fwd one forward over K positions (per-token) or over one
                        position reading a cache of 1/K the slots (folded), head calls not
                        counted; t_AR and t_fwd timed by the forward-cost probe in this run.
  hamburger             HAMburger with its wrapper initialised from the model
                        (`models.hamburger.init_params`: identity-like embedder, the last
                        layer as micro decoder) and `threshold=0`, so every step takes
                        `--block` tokens: one base forward over one position (one KV entry
                        per step) and block - 1 micro passes. Ideal: block x t_AR / t_fwd(1)
                        = block, micro passes not counted.
"speedup / ideal" is the share of the ideal a decoder reaches; a speedup above its ideal bound
(x 1.05) is flagged (!): load on the machine, not the method. Batch 1 and `--batch`; prompts
are random token ids of `--prompt_tokens`; EOS never ends a row. Writes
benchmarks/results/lossy_speed_<preset>_<device>.md and .json (or `--out`).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from benchmarks import common
from benchmarks import cost_model
from benchmarks import forward_cost
from benchmarks import harness
from decoding import Models, SamplingConfig, registry
from models import bitlm as bitlm_lib
from models import hamburger as ham_lib

VOCAB = 272  # the byte tokenizer's vocabulary, as the trained runs


def bitlm_params(model, params, block: int, fold: bool, seed: int = 1) -> dict:
  """{'target', 'bitlm'}: the random model and a random bit head (width 64, 2 layers, as
  configs/bitlm.py:tiny) conditioned on the model's width."""
  shape = bitlm_lib.HeadShape(block=block, bits=bitlm_lib.num_bits(model.cfg.vocab_size),
                              width=64, layers=2, heads=4, mlp=128, cond=model.cfg.d_model,
                              fold=fold)
  return {'target': params, bitlm_lib.BITLM: bitlm_lib.init_head(shape, jax.random.key(seed))}


def decoders(num_layers: int, skips: list[int], block: int, head_steps: int
             ) -> list[tuple[str, str, str, int]]:
  """(label, decoder spec, params kind, layers skipped) per row: kind 'ar', 'bitlm',
  'bitlm_fold' or 'hamburger'."""
  rows = [('ar', 'ar', 'ar', 0)]
  for s in skips:
    if not 0 < s < num_layers:
      raise ValueError(f'--skips: each skip must be in 1 .. {num_layers - 1}, got {s}.')
    rows += [(f'skipdecode, skip bottom {s}', f'skipdecode:schedule=0/{s}', 'ar', s),
             (f'early exit, skip top {s}', f'skipdecode:schedule=0/{s}:skip_from=top', 'ar', s)]
  rows += [(f'bitlm per-token, K={block}, {head_steps} head calls', f'bitlm:steps={head_steps}',
            'bitlm', 0),
           (f'bitlm folded, K={block}, {head_steps} head calls', f'bitlm:steps={head_steps}',
            'bitlm_fold', 0),
           (f'hamburger, {block} tokens per step', 'hamburger:threshold=0', 'hamburger', 0)]
  return rows


def ideal(skip: int, kind: str, num_layers: int, block: int, curve: dict) -> float:
  """The speedup a row could reach if its step cost only its backbone forward (module
  docstring); curve: {1: t_fwd, block: t_fwd over K positions, 'fold': t_fwd of one
  position over the folded cache}."""
  if kind == 'ar':
    return num_layers / (num_layers - skip)
  if kind == 'hamburger':  # one base forward over one position per step of `block` tokens
    return float(block)
  return block * curve[1] / curve[block if kind == 'bitlm' else 'fold']


def kv_per_token(skip: int, kind: str, num_layers: int, block: int) -> float:
  """KV entries a row writes per generated token and layer, averaged over the layers."""
  if kind in ('bitlm_fold', 'hamburger'):
    return 1 / block
  return (num_layers - skip) / num_layers


def run(args) -> tuple[list[dict], dict]:
  """(rows, meta: weight MB and layers of the preset)."""
  model, params = cost_model.random_model(args.preset, args.dtype, vocab_size=VOCAB)
  L = model.cfg.num_layers
  skips = [int(s) for s in args.skips.split(',') if s]
  rows_spec = decoders(L, skips, args.block, args.head_steps)
  kinds = {'ar': {'target': params},
           'bitlm': bitlm_params(model, params, args.block, fold=False),
           'bitlm_fold': bitlm_params(model, params, args.block, fold=True),
           'hamburger': {'target': params,
                         ham_lib.HAMBURGER: ham_lib.init_params(model.cfg, params, args.block)}}
  rng = np.random.default_rng(0)
  out = []
  for batch in [int(b) for b in args.batches.split(',')]:
    prompts = [list(rng.integers(3, VOCAB, args.prompt_tokens)) for _ in range(batch)]
    batches = harness.make_batches(prompts, batch, 0)
    slots = harness.cache_slots(prompts, args.new_tokens + args.block)
    kw = dict(max_new=args.new_tokens, cache_size=slots, eos_id=-1, pad_id=0)
    # Forwards as the decoders run them: the decoders' cache, half the new tokens committed;
    # the folded backbone's cache holds 1/K of the slots (decoding/diffusion/bitlm.py).
    context = args.prompt_tokens + args.new_tokens // 2
    curve = cost_model.forward_curve(model, params, batch=batch, tokens=sorted({1, args.block}),
                                     cache_size=slots, context=context)
    curve['fold'] = cost_model.forward_time(model, params, batch=batch, tokens=1,
                                            cache_size=-(-slots // args.block) + 1,
                                            context=context // args.block)
    progs = []
    for label, spec, kind, _ in rows_spec:
      name, settings = registry.parse_spec(spec)
      dec = registry.build(name, settings, SamplingConfig(temperature=0.0))
      fns, c = harness.compile_decoder(dec, Models(model), kinds[kind], batches, **kw)
      progs.append((fns, kinds[kind]))
      print(f'compiled {label} (B={batch}) in {c:.1f} s', flush=True)
    walls, results = harness.round_times(progs, batches, args.repeats)
    for (label, spec, kind, skip), wall, res in zip(rows_spec, walls, results):
      r = harness.summarise(res, float(np.median(wall)), 0.0)
      speedup = float(np.median(walls[0] / wall))
      bound = ideal(skip, kind, L, args.block, curve)
      out.append(dict(preset=args.preset, batch=batch, decoder=label, spec=spec,
                      tau=r['tau'], tokens_per_s=r['tokens_per_s'], speedup=speedup,
                      ideal=bound, share_of_ideal=speedup / bound,
                      above_ideal=speedup > 1.05 * bound,
                      kv_entries_per_token_per_layer=kv_per_token(skip, kind, L, args.block),
                      t_fwd_1_ms=curve[1] * 1e3, t_fwd_k_ms=curve[args.block] * 1e3,
                      t_fwd_fold_ms=curve['fold'] * 1e3, cache_slots=slots,
                      context=context))
      print(out[-1], flush=True)
  return out, dict(weight_mb=cost_model.weight_bytes(params) / 1e6, num_layers=L)


def report(rows: list[dict], meta: dict, args, name: str) -> str:
  table = []
  for r in rows:
    flag = ' (!)' if r['above_ideal'] else ''
    table.append([r['batch'], r['decoder'], f"{r['tau']:.2f}",
                  f"{r['kv_entries_per_token_per_layer']:.3g}", f"{r['tokens_per_s']:.4g}",
                  f"{r['speedup']:.2f}x{flag}", f"{r['ideal']:.2f}x",
                  f"{r['share_of_ideal']:.2f}"])
  curve = '; '.join(f"batch {r['batch']}: {r['t_fwd_1_ms']:.3f} ms at 1 position, "
                    f"{r['t_fwd_k_ms']:.3f} ms at {args.block}, {r['t_fwd_fold_ms']:.3f} ms at "
                    f"1 over the folded cache ({r['cache_slots']} / {args.block} + 1 slots)"
                    for r in rows if r['decoder'] == 'ar')
  context = rows[0]['context']
  body = (f'SPEED ONLY, RANDOM WEIGHTS (outputs meaningless; quality is measured on trained '
          f'models in skipdecode.md and bitlm*.md). Preset `{args.preset}` '
          f'({meta["weight_mb"]:.0f} MB of {args.dtype} weights, {meta["num_layers"]} layers, vocabulary '
          f'{VOCAB}), greedy, prompts of '
          f'{args.prompt_tokens} random tokens, {args.new_tokens} new tokens, EOS off. '
          f'Every decoder timed in the same {args.repeats} rounds (one pass of each per round, '
          'in turn, after a warm-up); speedup = median over rounds of AR\'s time / the '
          'decoder\'s within the round. Tokens per forward: generated tokens per backbone '
          'forward. These decoders run cheaper forwards than AR (fewer layers; a cache of 1/K '
          'the slots), so their bound is not the tokens per forward but the ideal. Ideal: '
          'SkipDecode / early exit L / (L - s) (the layers a token reads); HAMburger K (one '
          'base forward over one position per step of K tokens, micro passes not counted); '
          'BitLM K x t_AR / '
          't_fwd with t_fwd one cached forward over K positions (per-token backbone) or over one '
          'position with a cache of 1/K the slots (folded), both timed in this run by the '
          f'forward-cost probe after {context} committed tokens (the prompt and half the new '
          'tokens; the folded cache holds 1/K of them), head calls not counted. (!) '
          'marks a speedup above 1.05 x its ideal (load, not the method). KV entries per '
          f'token and layer: written by the decoder. Forward cost in this run: {curve}. One '
          'run, one seed.\n\n'
          + common.markdown_table(['batch', 'decoder', 'tokens per forward',
                               'KV entries / token / layer',
                                   'tokens/s', 'speedup vs AR', 'ideal', 'speedup / ideal'],
                                  table) + '\n')
  return common.write_results(name, f'Lossy cheaper steps on a memory-bound target '
                                    f'({args.preset}, random weights)', body)


def parse_args(argv=None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument('--preset', default='mem')
  ap.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'],
                  help='weights and compute of the target (the heads stay float32)')
  ap.add_argument('--batches', default='1,8')
  ap.add_argument('--skips', default='2,4', help='layers skipped (SkipDecode, early exit)')
  ap.add_argument('--block', type=int, default=4, help='BitLM tokens per block; HAMburger tokens per step')
  ap.add_argument('--head_steps', type=int, default=9, help='BitLM head calls per block')
  ap.add_argument('--prompt_tokens', type=int, default=64)
  ap.add_argument('--new_tokens', type=int, default=128)
  ap.add_argument('--repeats', type=int, default=5)
  ap.add_argument('--out', default='')
  args = ap.parse_args(argv)
  args.out = args.out or f'lossy_speed_{args.preset}_{forward_cost.device_tag()}'
  return args


def main(argv=None) -> str:
  args = parse_args(argv)
  rows, meta = run(args)
  common.write_json(args.out, {'provenance': common.provenance(), **meta, 'rows': rows})
  path = report(rows, meta, args, args.out)
  print(f'wrote {path}')
  return path


if __name__ == '__main__':
  main()
