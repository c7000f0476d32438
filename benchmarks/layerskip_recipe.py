"""What LayerSkip's early-exit fine-tune does to a model: quality and how well each exit drafts.

  python train.py --config=configs/layerskip.py:mem --workdir=runs/spec_mem/layerskip
  python -m benchmarks.layerskip_recipe --base=runs/spec_mem/target \
      --tuned=runs/spec_mem/layerskip --name=layerskip_recipe_mem_cpu

For the AR run (`--base`) and its fine-tune with the early-exit loss (`--tuned`,
configs/layerskip.py), teacher-forced on `--docs` held-out documents of the corpus (the first
`--chars` characters each; both runs read the same tokens):

  loss            the final head's next-token loss in nats per token (the model's quality:
                  the `layerskip` decoder is lossless with respect to the model it runs on);
  exit l: agree   how often the final norm and head read after l layers give the final head's
                  top-1 token: the acceptance of a greedy early-exit draft's first token, as
                  the decoder would see it with the right prefix;
  exit l: loss    that exit's own next-token loss.

Speed is measured by `benchmarks.speculative` on each run (the `layerskip` and `layerskip
adaptive length` methods). Writes benchmarks/results/<name>.md and .json.
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from models import heads as heads_lib
from training.metrics import read_metrics
from workbench import Workbench


def exit_stats(bench: Workbench, docs: list[list[int]]) -> dict[str, Any]:
  """Token-weighted loss of the final head and, per exit l, agreement with it and loss."""
  model = bench.model
  cfg = model.cfg

  @jax.jit
  def one(params, tokens_1xT):  # params an argument, not constants baked into the program
    inp, tgt = tokens_1xT[:, :-1], tokens_1xT[:, 1:]
    out = model.apply({'params': params}, inp, return_hidden=True)
    final = jnp.argmax(out.logits_BxTxV, -1)

    def nll(logits):
      logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
      return -jnp.sum(jnp.take_along_axis(logp, tgt[..., None], -1))
    per_exit = []
    for l in range(1, cfg.num_layers):
      logits = heads_lib.exit_logits(params, cfg, out.hidden[l])
      per_exit.append((jnp.sum(jnp.argmax(logits, -1) == final), nll(logits)))
    return nll(out.logits_BxTxV), per_exit

  n = 0
  total = 0.0
  L = cfg.num_layers
  agree, exit_nll = np.zeros(L - 1), np.zeros(L - 1)
  for doc in docs:
    if len(doc) < 2:
      continue
    loss, per_exit = one(bench.params, jnp.asarray([doc]))
    n += len(doc) - 1
    total += float(loss)
    for i, (a, e) in enumerate(per_exit):
      agree[i] += float(a)
      exit_nll[i] += float(e)
  return {'tokens': n, 'loss': total / n,
          'exits': [{'layer': l, 'agree': float(agree[l - 1] / n),
                     'loss': float(exit_nll[l - 1] / n)}
                    for l in range(1, L)]}


def last_eval(workdir: str) -> dict[str, float]:
  evals = [r for r in read_metrics(workdir) if r.get('split') == 'eval']
  return {k: float(v) for k, v in (evals[-1] if evals else {}).items()
          if isinstance(v, (int, float))}


def run(args) -> tuple[str, str]:
  runs = {'base (AR run)': args.base, 'fine-tuned (early-exit loss)': args.tuned}
  rows = []
  for label, workdir in runs.items():
    bench = Workbench.load(workdir)
    _, docs = bench.heldout_prompts(args.docs, chars=args.chars)
    stats = exit_stats(bench, docs)
    rows.append({'run': label, 'workdir': workdir, 'step': bench.target.step,
                 'train_eval': last_eval(workdir), **stats})
    print(label, f"loss {stats['loss']:.4f}",
          ' '.join(f"e{e['layer']}:{e['agree']:.3f}" for e in stats['exits']), flush=True)
  meta = {'docs': args.docs, 'chars': args.chars, 'provenance': common.provenance()}
  out_json = common.write_json(args.name, {**meta, 'rows': rows})
  L = len(rows[0]['exits']) + 1
  header = ['run', 'step', 'tokens', 'loss (nats/token)'] + [
      f'exit {l}: agree / loss' for l in range(1, L)]
  table = [[r['run'], r['step'], r['tokens'], round(r['loss'], 4)]
           + [f"{e['agree']:.3f} / {e['loss']:.3f}" for e in r['exits']] for r in rows]
  body = '\n'.join([
      f"Teacher-forced on {args.docs} held-out documents of the corpus (first {args.chars} "
      "characters each; the same tokens for both runs). loss: the final head's next-token "
      "loss; exit l: agree = share of positions where the final norm and head after l layers "
      "give the final head's top-1 token (a greedy early-exit draft's first-token "
      "acceptance), loss = that exit's own next-token loss. One run of each model, one seed.",
      '', *[f"- {r['run']}: `{r['workdir']}`" for r in rows], '',
      common.markdown_table(header, table)])
  return common.write_results(args.name, "LayerSkip's early-exit fine-tune: quality and exits",
                              body), out_json


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--base', default='runs/spec_mem/target')
  p.add_argument('--tuned', default='runs/spec_mem/layerskip')
  p.add_argument('--docs', type=int, default=32)
  p.add_argument('--chars', type=int, default=512)
  p.add_argument('--name', default='layerskip_recipe_mem_cpu')
  args = p.parse_args()
  print(*run(args), sep='\n')


if __name__ == '__main__':
  main()
