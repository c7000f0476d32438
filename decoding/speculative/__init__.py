"""Speculative decoding: drafters propose token trees, the target verifies them losslessly.

  trees.py        tree templates (chain, branching, best-first) and in-loop trees/tries
  verify.py       the shared verification core: tree forward, accept/reject, commit_accepted
  loop.py         the one while_loop every speculative decoder runs
  drafter.py      the drafter interface
  proposals.py    draft logits -> children (top-k, i.i.d., without replacement, SBS values)
  draft_model.py  a separate draft model (chain, static tree, dynamic tree, RSD-S)
  decoders.py     the registered decoders and their settings

See docs/speculative.md.
"""
