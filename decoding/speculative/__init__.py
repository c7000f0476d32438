"""Speculative decoding: drafters propose token trees, the target verifies them losslessly.

  trees.py        tree templates (chain, branching, best-first) and in-loop trees/tries
  verify.py       the shared verification core: tree forward, accept/reject, commit_accepted
  loop.py         the one while_loop every speculative decoder runs
  drafter.py      the drafter interface
  proposals.py    draft logits -> children (top-k, i.i.d., without replacement, SBS values)
  draft_model.py  a separate draft model (chain, static tree, dynamic tree, RSD-S)
  ngram.py        prompt lookup and Token Recycling drafters
  jacobi.py       Jacobi and lookahead drafters
  head_drafters.py  Medusa and MTP drafters (heads trained on the target)
  early_exit.py   LayerSkip, Kangaroo and DEL drafters (the target's own first layers)
  adaptive.py     adaptive draft length: the chain length per step by acceptance and cost
  ppd.py          PPD: trained prompt tokens drafting in the verifying forward, decoder ppd
  settings.py     the checks every speculative decoder's settings pass
  decoders.py     the registered decoders: one class per name, each a drafter family's
                  settings + a verifier choice (+ a tree policy), its drafter built once
  mask_mtp.py     masked-input MTP ("Your LLM Knows the Future"): the target drafts from
                  <mask> inputs through a gated LoRA in the forward that verifies

See docs/speculative.md.
"""

from decoding.speculative import decoders
from decoding.speculative import mask_mtp
from decoding.speculative import ppd
