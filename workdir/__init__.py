"""A run on disk: its checkpoints, loading a model with its config, tokenizer and kind, and the
Hugging Face import/export entry points.

  checkpoint.py   Orbax checkpoints of a run (params, optimizer state, step, data state, meta)
  integrity.py    per-array digests and sanity bounds checked at restore
  lock.py         `prepare(workdir)` and the one-process `lock(workdir)`
  loading.py      `load_model(workdir) -> LoadedModel` (model, params, extras, tokenizer, kind)
  kind.py         the checkpoint's `models.kind.ModelKind` (derived from the config for older
                  checkpoints); `for_decoder` gives a decoder's `for_model` its kinds
  hf_workdir.py   a workdir from a Hugging Face checkpoint (conversion itself: `models.hf`)
  hf_import.py    `python -m workdir.hf_import --hf_dir=... --workdir=...`
  hf_export.py    `python -m workdir.hf_export --workdir=... --out_dir=...`

Imports `models`, `data` and (for the HF import's base config) `configs`; `training` imports
this package, `decoding` does not (decoders receive kinds, not workdirs).
"""
