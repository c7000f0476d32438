"""One way to load a trained run and run decoders on it: what sample.py, the benchmarks and
the notebooks use.

  bench = workbench.Workbench.load('runs/tiny')       # model, params, config, tokenizer, kind
  texts, prompts = bench.heldout_prompts(8, chars=200)
  decs = bench.decoders(['ar', 'speculative:gamma=4'], decoding.SamplingConfig())
  results = bench.run(decs, prompts, max_new_tokens=64)   # {label: (rows, RunStats)}

  bench.py     `Workbench`: the target run, the extra runs decoders declare (draft, guide,
               drafter, large model; heads from another run), decoders by name fitted to the
               model kinds, running them with statistics (`decoding.compare`)
  prompts.py   the one prompt reader: held-out documents, a prompts file or one text

Sits above `decoding/` and `workdir/` (DESIGN.md's layers): imports them, `models` and
`data`; no library package imports it.
"""

from workbench.bench import MissingRunError, Workbench, describe_run, has_checkpoint
from workbench.prompts import check_prompt_sources, heldout_texts, read_prompts

__all__ = ['MissingRunError', 'Workbench', 'describe_run', 'has_checkpoint', 'heldout_texts',
           'read_prompts', 'check_prompt_sources']
