"""AR prefill and decode throughput, side by side with Hugging Face transformers `generate()`.

  python -m benchmarks.decode_ar --preset=base --dtype=bfloat16            # GPU: the goals
  python -m benchmarks.decode_ar --preset=tiny --contexts=128,512 --peer   # CPU smoke run
  python -m benchmarks.decode_ar --attention_impls=auto,mosaic   # GPU: + the Hopper kernels

Random weights (speed only). For each batch size B and context C: prefill tokens/s over a
[B, C] prompt, and decode tokens/s = B * (N - 1) / (t(N new tokens) - t(1 new token)), so the
prefill cancels. On a GPU also the HBM-bandwidth utilisation of a decode step: (weight bytes
+ K/V bytes read) / step time / device peak. The peer runs the same architecture as
LlamaForCausalLM (static cache and torch.compile on GPU; dynamic cache, eager on CPU).
`--attention_impls` runs ours once per `ModelConfig.attention_impl` (the first is the table's
main row; each other one adds its decode tokens/s and its ratio to the first, same run).
Writes benchmarks/results/decode_ar.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp

from benchmarks import common
from benchmarks import cost_model
from configs import common as presets
from decoding import ar, base
from models import Cache, ModelConfig, Transformer, init_params


def model_config(preset: str, dtype: str) -> ModelConfig:
  return cost_model.preset_config(preset, dtype)


def ours(cfg: ModelConfig, batch: int, context: int, new: int) -> dict[str, float]:
  model = Transformer(cfg)
  params = jax.tree.map(lambda p: p.astype(cfg.weight_dtype),
                        init_params(model, jax.random.key(0)))
  prompt = jax.random.randint(jax.random.key(1), (batch, context), 0, cfg.vocab_size)
  lengths = jnp.full((batch,), context, jnp.int32)
  keys = jax.random.split(jax.random.key(2), batch)
  size = context + new

  prefill = jax.jit(lambda p, t: base.prefill(model, p, t, lengths,
                                              Cache.init(cfg, batch, size))[0])
  t_prefill = common.median_time(lambda: prefill(params, prompt).block_until_ready())

  def compiled(n):
    fn = jax.jit(lambda p, t, k: ar.ARDecoder().generate(
        base.Models(model), {'target': p}, t, lengths, k, max_new_tokens=n, cache_size=size,
        eos_id=-1, pad_id=0).tokens_BxN)
    return fn.lower(params, prompt, keys).compile()

  gen_1, gen_n = compiled(1), compiled(new)
  t1 = common.median_time(lambda: gen_1(params, prompt, keys).block_until_ready(), repeats=3)
  tn = common.median_time(lambda: gen_n(params, prompt, keys).block_until_ready(), repeats=3)
  step = (tn - t1) / (new - 1)
  out = {'prefill_tok_s': batch * context / t_prefill, 'decode_tok_s': batch / step,
         'step_ms': step * 1e3}
  _, peak_bw = common.device_peaks()
  if peak_bw:
    item = jnp.dtype(cfg.weight_dtype).itemsize
    weight_bytes = sum(x.size for x in jax.tree.leaves(params)) * item
    kv_bytes = (2 * cfg.num_layers * batch * (context + new / 2) * cfg.num_kv_heads
                * cfg.head_dim * item)
    out['hbm_util'] = (weight_bytes + kv_bytes) / step / peak_bw
  return out


def peer(cfg: ModelConfig, batch: int, context: int, new: int) -> dict[str, float] | None:
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  dtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16}[cfg.dtype]
  hf_cfg = transformers.LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps,
      max_position_embeddings=cfg.max_seq_len, tie_word_embeddings=cfg.tie_embeddings,
      rope_theta=cfg.rope_theta, pad_token_id=0, bos_token_id=1, eos_token_id=2)
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(hf_cfg).to(device=device, dtype=dtype).eval()
  prompt = torch.randint(3, cfg.vocab_size, (batch, context), device=device)
  base_kw = dict(do_sample=False, attention_mask=torch.ones_like(prompt))
  # The fastest setting that works in the installed version, tried in order: static cache
  # with generate()'s automatic compilation of the decode step left on, static cache eager,
  # dynamic cache eager. The one used is reported.
  modes = [('static cache, generate() auto-compile on', dict(cache_implementation='static')),
           ('static cache, eager', dict(cache_implementation='static', disable_compile=True)),
           ('dynamic cache, eager', {})] if device == 'cuda' else [('dynamic cache, eager', {})]
  for mode, extra in modes:
    kw = {**base_kw, **extra}

    def run(n, kw=kw):
      with torch.no_grad():
        model.generate(prompt, max_new_tokens=n, min_new_tokens=n, **kw)
      if device == 'cuda':
        torch.cuda.synchronize()
    try:
      t1 = common.median_time(lambda: run(1), warmup=2, repeats=3)
      tn = common.median_time(lambda: run(new), warmup=1, repeats=3)
      break
    except Exception as e:  # pylint: disable=broad-except
      print(f'  peer ({mode}) failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}',
            flush=True)
  else:
    return None
  step = (tn - t1) / (new - 1)
  return {'prefill_tok_s': batch * context / t1, 'decode_tok_s': batch / step,
          'step_ms': step * 1e3, 'version': f'torch {torch.__version__}, transformers '
                                            f'{transformers.__version__}, {device}, {mode}'}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--preset', default='base', choices=sorted(presets.PRESETS))
  ap.add_argument('--dtype', default='bfloat16', choices=['float32', 'bfloat16'])
  ap.add_argument('--batch_sizes', default='1,8,32')
  ap.add_argument('--contexts', default='512,2048')
  ap.add_argument('--new_tokens', type=int, default=64)
  ap.add_argument('--peer', action=argparse.BooleanOptionalAction, default=True)
  ap.add_argument('--attention_impls', default='auto',
                  help="comma list of ModelConfig.attention_impl values, e.g. 'auto,mosaic'")
  args = ap.parse_args()
  impls = args.attention_impls.split(',')
  cfg = dataclasses.replace(model_config(args.preset, args.dtype), attention_impl=impls[0])
  rows, peer_version = [], ''
  for c in map(int, args.contexts.split(',')):
    for b in map(int, args.batch_sizes.split(',')):
      t0 = time.perf_counter()
      o = ours(cfg, b, c, args.new_tokens)
      print(f'B={b} C={c}: ours decode {o["decode_tok_s"]:.0f} tok/s, '
            f'{o["step_ms"]:.2f} ms/step, HBM util {o.get("hbm_util", "n/a")}', flush=True)
      p = peer(cfg, b, c, args.new_tokens) if args.peer else None
      if p:
        peer_version = p['version']
      others = []
      for impl in impls[1:]:
        try:
          oi = ours(dataclasses.replace(cfg, attention_impl=impl), b, c, args.new_tokens)
          others += [oi['decode_tok_s'], oi['decode_tok_s'] / o['decode_tok_s']]
        except Exception as e:  # pylint: disable=broad-except
          others += [f'failed: {type(e).__name__}', 'n/a']
        print(f'B={b} C={c}: attention {impl}: {others[-2]} tok/s', flush=True)
      rows.append([b, c, o['prefill_tok_s'], o['decode_tok_s'], o['step_ms'],
                   o.get('hbm_util', 'n/a'), p['decode_tok_s'] if p else 'n/a',
                   o['decode_tok_s'] / p['decode_tok_s'] if p else 'n/a',
                   p['prefill_tok_s'] if p else 'n/a', *others])
      print(f'B={b} C={c}: ours decode {o["decode_tok_s"]:.0f} tok/s'
            + (f', peer {p["decode_tok_s"]:.0f} tok/s' if p else '')
            + f' ({time.perf_counter() - t0:.0f}s)', flush=True)
  table = common.markdown_table(
      ['batch', 'context', 'prefill tok/s', 'decode tok/s', 'decode step ms', 'HBM util',
       'peer decode tok/s', 'ours / peer (decode)', 'peer prefill tok/s',
       *[h for impl in impls[1:] for h in (f'decode tok/s, attention {impl}',
                                           f'{impl} / {impls[0]} (decode)')]], rows)
  body = (f'Preset `{args.preset}` ({cfg.num_params() / 1e6:.1f}M params), {args.dtype}, '
          f'{args.new_tokens} new tokens, random weights, attention_impl {impls[0]}. Peer: '
          f'{peer_version or "not run"}.'
          f'\n\n{table}\n')
  path = common.write_results(f'decode_ar_{args.preset}', 'AR decode throughput', body)
  print(table)
  print(f'wrote {path}')


if __name__ == '__main__':
  main()
