"""Hot-spot ops: per op a plain-jnp reference, Pallas kernels and an `impl=` dispatch.

  attention/         the model's masked attention (dispatches to the kernels below)
  flash_attention/   prefill / training attention, forward + backward, masks by positions
  decode_attention/  decode and tree-verification attention over the cache (split-K)
  sampling/          sort-free temperature / top-k / top-p / min-p sampling
  delta_rule/        the (gated) delta rule; chunk.py runs its recurrences as Pallas scans
  spec_verify/       chain / tree verification; fused.py holds the fused GPU kernels

`common.py` resolves `impl` the same way for every op. See docs/kernels.md. This package
imports nothing else from the project (see DESIGN.md).
"""
