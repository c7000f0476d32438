"""Objectives, train state, the train step, sharding rules and the training loop
(checkpoints and loading live in `workdir/`)."""
