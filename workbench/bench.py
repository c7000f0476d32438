"""`Workbench`: a trained run loaded once, the extra runs its decoders declare, and decoders
built by name and run on prompts with their statistics.

  bench = Workbench.load('runs/tiny')                  # model, params, config, tokenizer, kind
  decs = bench.decoders(['ar', 'prompt_lookup:gamma=2'], decoding.SamplingConfig())
  results = bench.run(decs, prompts, max_new_tokens=64)  # {label: (rows, RunStats)}

A decoder declares the other runs it needs by its `*_workdir`-style settings
(`Decoder.extra_models()`: a draft, a guide, a drafter, a large model); the workbench loads
each once, checks it shares the target's vocabulary and hands it to the decoder as
params[name]. Heads trained in a separate run on the frozen target (Medusa, MTP, Kangaroo) are
attached with `add_heads`. Every decoder is checked against the model kinds it runs on
(`Decoder.for_model`), which also fills the settings that depend on them (mask id, shift).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

import data as data_lib
from decoding import base
from decoding import compare
from decoding import registry
from decoding import runner
from decoding import sampling as sampling_lib
from models import draft_vocab
from models import kind as kind_model_lib
from workdir import checkpoint as checkpoint_lib
from workdir import kind as kind_lib
from workdir import loading
from workbench import prompts as prompts_lib


class MissingRunError(ValueError):
  """A decoder needs a run (draft, guide, large model...) that is not a trained workdir."""


def has_checkpoint(workdir: str | None) -> bool:
  """Whether `workdir` holds at least one checkpoint (a run `Workbench.load` can read)."""
  ckpt = os.path.join(workdir or '', checkpoint_lib.CHECKPOINT_DIR)
  return bool(workdir) and os.path.isdir(ckpt) and bool(os.listdir(ckpt))


class Workbench:
  """A target run and the extra runs decoders ask for, each loaded once.

  target: the restored run (`workdir.loading.LoadedModel`).
  extras: trained trees passed to every decoder as params[name] beside params['target'] (the
    target run's own heads and adapters, plus those attached by `add_heads`).
  mesh, dtype: how every run is restored (sharded over `mesh`; weights cast to `dtype`).
  runs: restored runs by absolute workdir; pass one dict to several workbenches and a run is
    restored once for all of them, as a target or as an extra run.
  """

  def __init__(self, target: loading.LoadedModel, *, mesh: Mesh | None = None,
               dtype: str | None = None,
               runs: dict[str, loading.LoadedModel] | None = None):
    self.target = target
    self.mesh, self.dtype = mesh, dtype
    self.extras: dict[str, Any] = dict(target.extras)
    self._runs = {} if runs is None else runs
    self._runs.setdefault(target.workdir, target)
    self._token_counts = None

  @classmethod
  def load(cls, workdir: str, *, step: int | None = None, mesh: Mesh | None = None,
           dtype: str | None = None, runs: dict[str, loading.LoadedModel] | None = None
           ) -> 'Workbench':
    """Restores `workdir` (its newest readable checkpoint, or `step`) unless `runs` holds it;
    CheckpointError with a clear message when it is not a trained run."""
    key = os.path.abspath(workdir)
    if step is None and runs is not None and key in runs:
      return cls(runs[key], mesh=mesh, dtype=dtype, runs=runs)
    return cls(loading.load_model(workdir, step=step, mesh=mesh, dtype=dtype), mesh=mesh,
               dtype=dtype, runs=runs)

  # ------------------------------------------------------------------ the target run

  @property
  def workdir(self) -> str:
    return self.target.workdir

  @property
  def name(self) -> str:
    return os.path.basename(self.workdir.rstrip('/'))

  @property
  def step(self) -> int:
    return self.target.step

  @property
  def model(self):
    return self.target.model

  @property
  def params(self) -> Any:
    return self.target.params

  @property
  def config(self) -> dict[str, Any]:
    return self.target.config

  @property
  def tokenizer(self):
    return self.target.tokenizer

  @property
  def kind(self) -> kind_model_lib.ModelKind:
    """The target's kind, with the heads attached by `add_heads` (so decoders that draft with
    them pass `Decoder.for_model`)."""
    kind = self.target.kind
    added = tuple(h for h in self.extras if h in kind_model_lib.HEADS and h not in kind.heads)
    return dataclasses.replace(kind, heads=kind.heads + added) if added else kind

  def heldout_prompts(self, n: int, chars: int) -> tuple[list[str], list[list[int]]]:
    """(texts, token ids): `n` held-out documents of this run's corpus, first `chars`
    characters each, encoded as the model's prompts."""
    texts = prompts_lib.heldout_texts(self.config.get('data'), n, chars)
    return texts, [self.tokenizer.encode_prompt(t) for t in texts]

  def draft_vocabulary(self, count: int) -> Any:
    """[count] int32, ascending: the `count` most frequent tokens of this run's training split
    (its config['data'], tokenized by its tokenizer; counted once per workbench, a few
    seconds for the embedded corpus): the decode-time draft vocabulary of decoders with
    `draft_vocab=count` (FR-Spec, `models.draft_vocab`)."""
    valid = min(self.tokenizer.vocab_size, self.model.cfg.vocab_size)
    if not 0 < count < valid:
      raise ValueError(f'draft_vocab must be in [1, {valid - 1}] (0 = the whole vocabulary of '
                       f'{valid} tokens), got {count}.')
    if self._token_counts is None:
      cfg = data_lib.DataConfig(**(self.config.get('data') or {}))
      self._token_counts = data_lib.token_counts(cfg, self.tokenizer)
    return draft_vocab.top_ids(self._token_counts[:valid], count)

  def draft_vocab_params(self, decoders: Sequence[base.Decoder]) -> dict[str, Any]:
    """{'draft_vocab': {str(N): ids}} for the draft vocabularies `decoders` read ({} if
    none)."""
    sizes = sorted({n for d in decoders for n in d.draft_vocab_sizes()})
    if not sizes:
      return {}
    return {draft_vocab.RUN_KEY: {draft_vocab.size_key(n): jnp.asarray(self.draft_vocabulary(n))
                                  for n in sizes}}

  # ------------------------------------------------------------------ other runs

  def run_of(self, workdir: str) -> loading.LoadedModel:
    """Another run (a draft, guide or large model), loaded once; ValueError unless it has the
    target's vocabulary."""
    key = os.path.abspath(workdir)
    if key not in self._runs:
      self._runs[key] = loading.load_model(workdir, mesh=self.mesh, dtype=self.dtype)
    run = self._runs[key]
    if run.tokenizer.vocab_size != self.tokenizer.vocab_size:
      raise ValueError(f'{workdir} uses a different vocabulary ({run.tokenizer.vocab_size} '
                       f'tokens) from the target ({self.tokenizer.vocab_size}).')
    return run

  def add_heads(self, name: str, workdir: str) -> None:
    """Passes the trees `name` trained in `workdir` on the frozen target (e.g. 'medusa') to
    every decoder as params[name]."""
    run = self.run_of(workdir)
    if name not in run.extras:
      raise ValueError(f'{workdir} holds no {name!r} trees (it has {sorted(run.extras)}).')
    self.extras[name] = run.extras[name]

  def missing_runs(self, decoder: base.Decoder) -> dict[str, str]:
    """{name: workdir} of the runs `decoder` declares that are not trained workdirs."""
    return {k: v for k, v in decoder.extra_models().items() if not has_checkpoint(v)}

  def check_runs(self, decoder: base.Decoder) -> None:
    """MissingRunError naming the decoder, the run and the setting to give, if one is
    missing."""
    missing = self.missing_runs(decoder)
    if missing:
      raise MissingRunError(
          f'Decoder {decoder.name!r} needs ' + ', '.join(
              f'model {k!r} ({v or "not set"}: no checkpoints there)' for k, v in missing.items())
          + '; give a trained workdir in its setting (e.g. draft_workdir=DIR).')

  def models_for(self, decoder: base.Decoder, extra_params: Mapping[str, Any] | None = None
                 ) -> tuple[base.Models, dict[str, Any]]:
    """(models, params) `decoder.generate` runs on: the target, the runs it declares, the
    workbench's extras and `extra_params` (e.g. a router's weights)."""
    self.check_runs(decoder)
    extras, params = [], {**self.extras, **self.draft_vocab_params([decoder]),
                          **(extra_params or {}), 'target': self.params}
    for name, workdir in decoder.extra_models().items():
      run = self.run_of(workdir)
      extras.append((name, run.model))
      params[name] = run.params
    return base.Models(self.model, extras=tuple(extras)), params

  # ------------------------------------------------------------------ decoders

  def fit(self, decoder: base.Decoder) -> base.Decoder:
    """`decoder` checked against the kinds of this run and of the runs it declares
    (`Decoder.for_model`: a one-line ValueError on a mismatch), its kind-dependent settings
    filled in."""
    return decoder.for_model(kind_lib.for_decoder(self.kind, decoder.extra_models()))

  def decoder(self, spec: str, sampling: sampling_lib.SamplingConfig | None = None,
              settings: Mapping[str, Any] | None = None,
              runs: Mapping[str, str] | None = None) -> base.Decoder:
    """Decoder 'NAME[:key=value...]' (`registry.parse_spec`) fitted to this run.

    `settings`: more settings (the spec's own win); `runs` {name: workdir}: fills an unset
    setting `name` or `name_workdir` (e.g. runs={'draft': DIR} -> draft_workdir=DIR).
    """
    name, own = registry.parse_spec(spec)
    fields = {f.name: f for f in registry.settings_fields(name)}
    chosen = {**{k: v for k, v in (settings or {}).items() if k in fields}, **own}
    for f in fields.values():
      key = f.name.removesuffix('_workdir')
      if f.default in ('', None) and not chosen.get(f.name) and key in (runs or {}):
        chosen[f.name] = runs[key]
    return self.fit(registry.build(name, chosen, sampling))

  def decoders(self, specs: Sequence[str], sampling: sampling_lib.SamplingConfig,
               settings: ml_collections.ConfigDict | None = None,
               overridden: Sequence[str] = ()) -> list[tuple[str, base.Decoder]]:
    """[(label, decoder)] for sample.py-style specs, with the `overridden` keys of `settings`
    (--decoder_config) given to every decoder that has them (`compare.build_decoders`)."""
    settings = settings or compare.merged_settings(specs)
    return [(label, self.fit(d)) for label, d in
            compare.build_decoders(specs, settings, overridden, sampling)]

  # ------------------------------------------------------------------ running

  def run(self, decoders: Sequence[base.Decoder | tuple[str, base.Decoder]],
          prompts: Sequence[Sequence[int]], *, max_new_tokens: int, cache_size: int = 0,
          seed: int = 0, batch_size: int | None = None, repeats: int = 1,
          extra_params: Mapping[str, Any] | None = None) -> compare.Results:
    """Runs every decoder on the same prompts (`compare.run_all`): {label: (rows, stats)}.

    cache_size 0 = just enough for all of them; `repeats` > 1 times each that many times
    (passes interleaved) and keeps its fastest pass; `extra_params`: more trees passed as
    params[name] (e.g. a router's weights). MissingRunError before anything runs when a
    decoder's extra run is missing.
    """
    plain = [d[1] if isinstance(d, tuple) else d for d in decoders]
    for d in plain:
      self.check_runs(d)
    tok = self.tokenizer

    def load_extra(workdir: str):
      run = self.run_of(workdir)
      return run.model, run.params

    return compare.run_all(decoders, self.model, self.params, prompts, eos_id=tok.eos_id,
                           pad_id=tok.pad_id, max_new_tokens=max_new_tokens,
                           cache_size=cache_size, seed=seed, batch_size=batch_size,
                           mesh=self.mesh, load_extra=load_extra,
                           target_extras={**self.extras, **self.draft_vocab_params(plain),
                                          **(extra_params or {})},
                           repeats=repeats)

  def run_one(self, decoder: base.Decoder, prompts: Sequence[Sequence[int]], **kwargs
              ) -> tuple[list[runner.RowOutput], runner.RunStats]:
    """(rows, stats) of one decoder; keyword arguments as `run`."""
    return next(iter(self.run([decoder], prompts, **kwargs).values()))


def describe_run(run: loading.LoadedModel | Workbench) -> str:
  """One line about a run: its kind, step, size and training shape."""
  run = run.target if isinstance(run, Workbench) else run
  cfg = run.config
  size = sum(int(x.size) for x in jax.tree.leaves(run.params))
  data = cfg.get('data', {})
  init = (cfg.get('diffusion') or {}).get('init_from')
  return (f"{run.kind.describe()}, step {run.step} of {cfg.get('train', {}).get('steps')}, "
          f"{size / 1e6:.2f}M params, batch {data.get('batch_size')} x seq_len "
          f"{data.get('seq_len')}" + (f', initialised from {init}' if init else ''))
