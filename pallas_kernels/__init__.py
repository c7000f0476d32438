"""Hot-spot ops: per op a plain-jnp reference, Pallas kernels and an `impl=` dispatch.

This package imports nothing else from the project (see DESIGN.md).
"""
