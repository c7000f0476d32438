"""Synthetic tasks generated deterministically from a seed (one module per task family)."""
