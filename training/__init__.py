"""Objectives, train state, the train step, sharding and checkpointing."""
