"""One report over every registered decoder: speed, τ, NFE and quality on the same prompts.

  python -m benchmarks.report [--workdirs=runs/tiny[,runs/mdlm,...]] [--models=draft=runs/d]
      [--num_prompts=8] [--max_new_tokens=64] [--temperatures=0,1] [--decoders=all]
      [--set=NAME.FIELD=VALUE ...] [--out=benchmarks/results/report.md]

Every decoder in `decoding.registry` (new modules register themselves) runs on held-out
files of each model's corpus at every temperature and is grouped by family. A decoder runs
on the first workdir whose training objective it decodes (the class attribute `objectives`
if it has one; an any-order decoder (`model_kinds`) <-> an any-subset AR run; else: family
'diffusion' <-> a diffusion objective, every other family <-> an AR model; building it then
checks the run's `ModelKind`); decoders that need a model no workdir provides, or whose
extra models (e.g. a draft `*_workdir` setting) are not given, are listed as skipped with
the reason, as is any decoder that fails.

Columns: τ = tokens per target forward (bonus token counted); NFE/token = all forward passes
(target + draft/heads) per generated token; tokens/s excludes compilation; speedup = tokens/s
over AR's on the same prompts and temperature. Quality, from an AR judge model (the first AR
workdir, `--judge_workdir` to change): the judge's perplexity of the generated text given the
prompt (lower = more likely under the AR model; lossless methods equal AR's) and the mean
per-sample unigram entropy of the generated tokens in bits (as MDLM/ReMDM report beside
generative perplexity: repetitive text has low perplexity *and* low entropy). Plots: speed
against perplexity, and acceptance by position (the fraction of steps committing >= k tokens,
from every decoder's step histogram). The rows are also written as JSON beside the markdown;
`--replot` rewrites the markdown and plots from it without running anything.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import common

DIFFUSION_OBJECTIVES = ('masked_diffusion', 'block_diffusion', 'wedlm')
ANY_ORDER_OBJECTIVES = ('as_arm',)


@dataclasses.dataclass
class Model:
  """A workdir offered to the report: the loaded model, its objective and prompts."""
  workdir: str
  loaded: Any  # workdir.loading.LoadedModel
  objective: str
  prompts: list[list[int]]
  texts: list[str]

  @property
  def name(self) -> str:
    return os.path.basename(self.workdir.rstrip('/'))


@dataclasses.dataclass
class Row:
  """One decoder at one temperature on one model."""
  method: str
  family: str
  lossless: bool
  temperature: float
  model: str
  tau: float
  nfe_per_token: float
  tokens_per_s: float
  generated: int
  compile_s: float
  step_hist: list[int]
  tokens: list[list[int]]
  texts: list[str]
  speedup: float = float('nan')
  perplexity: float = float('nan')
  entropy_bits: float = float('nan')
  same_as_ar: str = '—'


def decodes(cls: Any, objective: str) -> bool:
  """Whether decoder class `cls` runs on a model trained with `objective`."""
  wanted = getattr(cls, 'objectives', None)
  if wanted:
    return objective in tuple(wanted)
  if 'any_order' in getattr(cls, 'model_kinds', ()):  # assd: models.kind family any_order
    return objective in ANY_ORDER_OBJECTIVES
  if objective in ANY_ORDER_OBJECTIVES:  # only decoders of that family read it
    return False
  return (cls.family == 'diffusion') == (objective in DIFFUSION_OBJECTIVES)


def load_models(workdirs: Sequence[str], *, num_prompts: int, prompt_chars: int) -> list[Model]:
  """Loads each workdir and takes the same held-out texts as prompts for all of them."""
  import data  # pylint: disable=g-import-not-at-top
  from workdir import loading  # pylint: disable=g-import-not-at-top
  models, texts = [], None
  for workdir in workdirs:
    loaded = loading.load_model(workdir)
    if texts is None:
      cfg = data.DataConfig(**(loaded.config.get('data') or {}))
      texts = []
      for doc in data.load_texts(cfg, cfg.eval_split):
        if len(doc) >= prompt_chars:
          texts.append(doc[:prompt_chars])
        if len(texts) == num_prompts:
          break
    prompts = [loaded.tokenizer.encode(t, add_bos=True) for t in texts]
    models.append(Model(workdir=loaded.workdir, loaded=loaded,
                        objective=str(loaded.config.get('objective', 'ar')), prompts=prompts,
                        texts=texts))
  return models


_EXTRA_CACHE: dict[str, Any] = {}


def _extra_loader(target: Model):
  """load_extra for compare.run_all: loads a workdir once per process, checks the vocab."""
  from workdir import loading  # pylint: disable=g-import-not-at-top

  def load_extra(workdir: str):
    key = os.path.abspath(workdir)
    if key not in _EXTRA_CACHE:
      _EXTRA_CACHE[key] = loading.load_model(workdir)
    extra = _EXTRA_CACHE[key]
    if extra.tokenizer.vocab_size != target.loaded.tokenizer.vocab_size:
      raise ValueError(f'{workdir} uses a different vocabulary from {target.workdir}.')
    return extra.model, extra.params
  return load_extra


def targets(name: str, models: Sequence[Model]) -> tuple[list[Model], str]:
  """The workdirs decoder `name` may run on, in order, or ([], why none fits)."""
  from decoding import registry  # pylint: disable=g-import-not-at-top
  cls = registry.get(name)
  fits = [m for m in models if decodes(cls, m.objective)]
  if fits:
    return fits, ''
  wanted = getattr(cls, 'objectives', None) or (
      ANY_ORDER_OBJECTIVES if 'any_order' in getattr(cls, 'model_kinds', ()) else
      DIFFUSION_OBJECTIVES if cls.family == 'diffusion' else ('ar', '...'))
  return [], (f'needs a model trained with {"/".join(wanted)}; the workdirs given have '
              f'{sorted({m.objective for m in models})}')


def build(name: str, temperature: float, target: Model, extra_workdirs: dict[str, str],
          settings: dict[str, Any]) -> tuple[Any, str]:
  """(decoder for `target`, '') or (None, the reason it cannot be built)."""
  import decoding  # pylint: disable=g-import-not-at-top
  from decoding import registry  # pylint: disable=g-import-not-at-top
  fields = {f.name: f for f in registry.settings_fields(name)}
  chosen = {k: v for k, v in settings.items() if k in fields}
  for f in fields.values():  # draft_workdir or draft <- --models=draft=DIR
    key = f.name.removesuffix('_workdir')
    if f.default in ('', None) and not chosen.get(f.name) and key in extra_workdirs:
      chosen[f.name] = extra_workdirs[key]
  try:
    dec = registry.build(name, chosen, decoding.SamplingConfig(temperature=temperature))
    needs = dec.extra_models()
    if hasattr(dec, 'for_model'):
      from workdir import kind as kind_lib  # pylint: disable=g-import-not-at-top
      dec = dec.for_model(kind_lib.for_decoder(target.loaded.kind, needs))
  except (ValueError, TypeError, KeyError) as e:
    return None, f'cannot be built with these settings: {e}'
  missing = {k: v for k, v in needs.items() if not v or not os.path.isdir(v)}
  if missing:
    return None, ('needs model(s) ' + ', '.join(f'{k!r} ({v or "not set"})'
                                                for k, v in missing.items())
                  + f'; pass --models={list(missing)[0]}=DIR or --set={name}.FIELD=DIR')
  return dec, ''


def run_one(dec: Any, target: Model, *, max_new_tokens: int, seed: int,
            repeats: int = 5) -> Row:
  """Runs `dec` on all prompts `repeats` times (compiled once); tokens/s from the median."""
  from decoding import compare  # pylint: disable=g-import-not-at-top
  tok = target.loaded.tokenizer
  walls, first = [], None
  for _ in range(max(repeats, 1)):
    results = compare.run_all([dec], target.loaded.model, target.loaded.params,
                              target.prompts, eos_id=tok.eos_id, pad_id=tok.pad_id,
                              max_new_tokens=max_new_tokens, seed=seed,
                              load_extra=_extra_loader(target),
                              target_extras=target.loaded.extras)
    rows, stats = next(iter(results.values()))
    first = first or (rows, stats)
    walls.append(stats.wall_time_s)
  rows, stats = first
  return Row(method=dec.name, family=type(dec).family, lossless=type(dec).lossless,
             temperature=dec.sampling.temperature, model=target.name, tau=stats.tau,
             nfe_per_token=(stats.target_forwards + stats.other_forwards)
             / max(stats.generated, 1),
             tokens_per_s=stats.generated / max(float(np.median(walls)), 1e-9),
             generated=stats.generated, compile_s=stats.compile_time_s,
             step_hist=list(stats.step_tokens_hist),
             tokens=[r.tokens for r in rows], texts=[tok.decode(r.tokens) for r in rows])


@functools.partial(jax.jit, static_argnums=0)
def _next_token_nll(model: Any, params: Any, tokens_BxT: jax.Array, positions_BxT: jax.Array
                    ) -> jax.Array:
  """[B, T-1] -log p(token t+1 | tokens <= t) under `model`."""
  logits = model.apply({'params': params}, tokens_BxT, positions_BxT).logits_BxTxV
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, tokens_BxT[:, 1:, None], axis=-1)[..., 0]


def judge_quality(judge: Model, prompt_texts: Sequence[str], gen_texts: Sequence[str]
                  ) -> tuple[float, float]:
  """(perplexity of the generated text given the prompt, mean unigram entropy in bits)."""
  tok, model, params = judge.loaded.tokenizer, judge.loaded.model, judge.loaded.params
  seqs, starts, entropies = [], [], []
  for p, g in zip(prompt_texts, gen_texts):
    prompt, gen = tok.encode(p, add_bos=True), tok.encode(g)
    if gen:
      counts = np.unique(gen, return_counts=True)[1] / len(gen)
      entropies.append(float(-(counts * np.log2(counts)).sum()))
    seqs.append((prompt + gen)[:model.cfg.max_seq_len])
    starts.append(len(prompt))
  if not entropies:
    return float('nan'), float('nan')
  T = int(math.ceil(max(map(len, seqs)) / 64) * 64)
  tokens = np.zeros((len(seqs), T), np.int32)
  positions = np.full((len(seqs), T), -1, np.int32)
  scored = np.zeros((len(seqs), T), bool)  # token t+1 is scored from position t
  for b, (s, start) in enumerate(zip(seqs, starts)):
    tokens[b, :len(s)], positions[b, :len(s)] = s, np.arange(len(s))
    scored[b, start - 1:len(s) - 1] = True

  per_token = np.asarray(_next_token_nll(model, params, jnp.asarray(tokens),
                                         jnp.asarray(positions)))
  mask = scored[:, :-1]
  return float(np.exp(per_token[mask].sum() / max(mask.sum(), 1))), float(np.mean(entropies))


def _score(row: Row, rows: Sequence[Row], judge: Model, target: Model) -> None:
  """Fills quality, the speedup against AR on the same model and temperature, and whether
  the tokens equal AR's at temperature 0."""
  row.perplexity, row.entropy_bits = judge_quality(judge, target.texts, row.texts)
  ar = next((r for r in rows if r.method == 'ar' and r.model == row.model
             and r.temperature == row.temperature), None)
  if row.method == 'ar':
    row.speedup = 1.0
  elif ar is not None:
    row.speedup = row.tokens_per_s / max(ar.tokens_per_s, 1e-9)
    if row.temperature == 0:
      row.same_as_ar = 'yes' if row.tokens == ar.tokens else 'no'


def run_report(models: Sequence[Model], *, decoders: Sequence[str] | None = None,
               temperatures: Sequence[float] = (0.0, 1.0), max_new_tokens: int = 64,
               seed: int = 0, repeats: int = 5, extra_workdirs: dict[str, str] | None = None,
               settings: dict[str, dict[str, Any]] | None = None, judge: Model | None = None,
               log=print) -> tuple[list[Row], list[tuple[str, str]]]:
  """Runs every decoder (default: all registered) at every temperature.

  Returns (rows, skipped [(decoder, reason)]). AR runs first, on every model it decodes; the
  speedups and the 'same tokens as AR at T=0' column are relative to AR on the same model.
  Every other decoder runs on the first compatible model that does not refuse it.
  """
  from decoding import registry  # pylint: disable=g-import-not-at-top
  names = list(decoders or registry.names())
  names.sort(key=lambda n: (n != 'ar', registry.get(n).family, n))
  judge = judge or next((m for m in models if m.objective == 'ar'), models[0])
  rows: list[Row] = []
  skipped: list[tuple[str, str]] = []
  for name in names:
    fits, reason = targets(name, models)
    if not fits:
      skipped.append((name, reason))
      log(f'skip {name}: {reason}')
      continue
    refusals: dict[float, str] = {}
    for temperature in temperatures:
      # AR, the baseline, runs on every model; the others on the first that accepts them.
      reasons = []
      for target in fits:
        dec, reason = build(name, temperature, target, extra_workdirs or {},
                            (settings or {}).get(name, {}))
        if dec is None:
          reasons.append(reason)
          break  # the settings, not the model, are the problem
        try:
          row = run_one(dec, target, max_new_tokens=max_new_tokens, seed=seed,
                        repeats=repeats)
        except Exception as e:  # pylint: disable=broad-except
          # A ValueError is a decoder refusing this model with its own message (e.g. "needs
          # an adapter in the target run"): try the next model. Anything else is a failure.
          first_line = str(e).splitlines()[0][:300] if str(e) else ''
          kind = 'refused' if isinstance(e, ValueError) else 'failed'
          reasons.append(f'{kind} by {target.name}: {type(e).__name__}: {first_line}')
          log(f'{kind} {name} T={temperature:g} on {target.name}: {type(e).__name__}: {e}')
          if kind == 'failed':
            break
          continue
        _score(row, rows, judge, target)
        rows.append(row)
        reasons = []
        log(f'{name:24s} T={temperature:g} on {row.model}: tau {row.tau:.2f}, '
            f'{row.tokens_per_s:.0f} tok/s, ppl {row.perplexity:.2f}')
        if name != 'ar':
          break
      if reasons:
        refusals[temperature] = '; '.join(reasons)
    if len(refusals) == len(temperatures) and len(set(refusals.values())) == 1:
      skipped.append((name, refusals[temperatures[0]]))
    else:
      skipped += [(f'{name} (T={t:g})', why) for t, why in refusals.items()]
  return rows, skipped


DEGENERATE = 0.5  # repeated 8-grams at or above this: the output loops


def repeated_fraction(texts: Sequence[str], n: int = 8) -> float:
  """How much of the generated text repeats itself: the share of its character n-grams that
  already occurred earlier in the same text, averaged over the texts (0 = no repeat; a text
  stuck in a loop approaches 1). NaN when no text has two n-grams."""
  shares = []
  for text in texts:
    grams = [text[i:i + n] for i in range(len(text) - n + 1)]
    if len(grams) < 2:
      continue
    seen, repeats = set(), 0
    for g in grams:
      repeats += g in seen
      seen.add(g)
    shares.append(repeats / len(grams))
  return float(np.mean(shares)) if shares else float('nan')


LEGEND = ('(!) after a speedup: above τ, which a method cannot reach (each step runs the target '
          'over at least one token, plus any drafting, so it never costs less than an AR '
          'step): timing noise, not the method. *repeated 8-grams*: the share of the '
          "generated text's 8-character windows already seen earlier in the same text (mean "
          f'over prompts); from {DEGENERATE:g} on the row is marked degenerate: the output '
          'loops, and speed measured on it (lookup drafters above all) says little about '
          'real text.')


def markdown(rows: Sequence[Row], skipped: Sequence[tuple[str, str]], plots: Sequence[str],
             setup: str) -> str:
  """The report body: the table, what was skipped and why, the plots."""
  fmt = lambda x, p=2: '—' if x != x else f'{x:.{p}f}'  # NaN -> dash
  lines = [setup, '', LEGEND, '',
           '| method | family | lossless | T | model | τ | NFE/token | tokens/s | speedup vs AR '
           '| judge ppl | entropy (bits) | repeated 8-grams | same tokens as AR (T=0) |',
           '|' + '---|' * 13]
  for r in sorted(rows, key=lambda r: (r.family != 'autoregressive', r.family, r.method,
                                       r.temperature)):
    flag = ' (!)' if common.speedup_above_tau(r.speedup, r.tau) else ''
    rep = repeated_fraction(r.texts)
    rep_cell = fmt(rep) + (' (degenerate)' if rep >= DEGENERATE else '')
    lines.append(f'| {r.method} | {r.family} | {"yes" if r.lossless else "no"} '
                 f'| {r.temperature:g} | {r.model} | {fmt(r.tau)} | {fmt(r.nfe_per_token)} '
                 f'| {r.tokens_per_s:.0f} | {fmt(r.speedup)}x{flag} | {fmt(r.perplexity)} '
                 f'| {fmt(r.entropy_bits)} | {rep_cell} | {r.same_as_ar} |')
  if skipped:
    lines += ['', '**Skipped**', ''] + [f'- `{n}`: {why}' for n, why in skipped]
  lines += [''] + [f'![{os.path.splitext(p)[0]}]({p})' for p in plots]
  return '\n'.join(lines)


def acceptance_curve(step_hist: Sequence[int]) -> np.ndarray:
  """[M-1] fraction of steps that committed at least k tokens, k = 1..M-1."""
  hist = np.asarray(step_hist, float)
  total = hist[1:].sum()
  return np.cumsum(hist[::-1])[::-1][1:] / max(total, 1.0)


def plot(rows: Sequence[Row], out_dir: str, prefix: str = 'report') -> list[str]:
  """Writes <prefix>_speed_quality.png and <prefix>_acceptance.png; returns file names."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  names = []
  temps = sorted({r.temperature for r in rows})
  fig, axes = plt.subplots(1, len(temps), figsize=(5.5 * len(temps), 4.5), squeeze=False)
  for ax, t in zip(axes[0], temps):
    for r in (r for r in rows if r.temperature == t):
      ax.scatter(r.perplexity, r.speedup, color='C0' if r.lossless else 'C3')
      ax.annotate(r.method, (r.perplexity, r.speedup), fontsize=7)
    ax.set_xscale('log')
    ax.set_xlabel('judge perplexity of the generated text (lower is better)')
    ax.set_ylabel('speedup vs AR (tokens/s)')
    ax.set_title(f'T={t:g} (blue: lossless, red: lossy)', fontsize=9)
  names.append(f'{prefix}_speed_quality.png')
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, names[-1]), dpi=120)
  plt.close(fig)
  multi = [r for r in rows if r.tau > 1.05]  # one-token-per-step decoders: a flat line
  colors = {m: f'C{i % 10}' for i, m in enumerate(dict.fromkeys(r.method for r in multi))}
  fig, axes = plt.subplots(1, len(temps), figsize=(5.5 * len(temps), 4.5), squeeze=False)
  for ax, t in zip(axes[0], temps):
    for r in (r for r in multi if r.temperature == t):
      curve = acceptance_curve(r.step_hist)
      ax.plot(np.arange(1, len(curve) + 1), curve, marker='.', color=colors[r.method],
              label=f'{r.method} (tau {r.tau:.2f})')
    ax.set_xlabel('k (tokens committed in one step)')
    ax.set_ylabel('fraction of steps committing >= k')
    ax.set_ylim(0, 1.05)
    ax.set_title(f'acceptance by position, T={t:g}', fontsize=9)
    if any(r.temperature == t for r in multi):
      ax.legend(fontsize=7)
  names.append(f'{prefix}_acceptance.png')
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, names[-1]), dpi=120)
  plt.close(fig)
  return names


def define_flags() -> Any:
  """The command-line flags (defined only when run as a script, so importing this module
  from notebooks or tests adds no absl flags)."""
  f = flags
  return dict(
      workdirs=f.DEFINE_list('workdirs', ['runs/tiny'], 'Workdirs of the models to use.'),
      models=f.DEFINE_list('models', [], 'Extra models for decoders: NAME=WORKDIR, e.g. '
                           'draft=runs/draft fills a decoder setting draft_workdir.'),
      judge=f.DEFINE_string('judge_workdir', None, 'AR model scoring quality (default: the '
                            'first AR workdir).'),
      decoders=f.DEFINE_list('decoders', [], 'Decoders to run (default: all registered).'),
      set=f.DEFINE_multi_string('set', [], 'A decoder setting: NAME.FIELD=VALUE.'),
      num_prompts=f.DEFINE_integer('num_prompts', 8, 'Held-out documents used as prompts.'),
      prompt_chars=f.DEFINE_integer('prompt_chars', 200, 'Characters of each prompt.'),
      max_new_tokens=f.DEFINE_integer('max_new_tokens', 64, 'Tokens generated per prompt.'),
      temperatures=f.DEFINE_list('temperatures', ['0', '1'], 'Sampling temperatures.'),
      seed=f.DEFINE_integer('seed', 0, 'Sampling seed.'),
      repeats=f.DEFINE_integer('repeats', 5, 'Timed runs per decoder (median reported).'),
      out=f.DEFINE_string('out', os.path.join(common.RESULTS_DIR, 'report.md'),
                          'Markdown file to write (plots and JSON go beside it).'),
      replot=f.DEFINE_bool('replot', False, 'Only rewrite the markdown and plots from the '
                           'JSON of the previous run.'))


def parse_settings(items: Sequence[str]) -> dict[str, dict[str, Any]]:
  """['spec.gamma=4', ...] -> {'spec': {'gamma': 4}} (values parsed as Python literals)."""
  import ast  # pylint: disable=g-import-not-at-top
  out: dict[str, dict[str, Any]] = {}
  for item in items:
    key, sep, value = item.partition('=')
    name, dot, field = key.partition('.')
    if not sep or not dot:
      raise ValueError(f'--set expects NAME.FIELD=VALUE, got {item!r}.')
    try:
      parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      parsed = value
    out.setdefault(name, {})[field] = parsed
  return out


def write(out: str, rows: Sequence[Row], skipped: Sequence[tuple[str, str]], setup: str,
          provenance: str, rendered: str = '') -> list[str]:
  """Writes the markdown, its plots and <out>.json (rows without token ids); `rendered`
  (a provenance line for --replot) goes in the markdown only."""
  import json  # pylint: disable=g-import-not-at-top
  out_dir = os.path.dirname(os.path.abspath(out))
  prefix = os.path.splitext(os.path.basename(out))[0]
  os.makedirs(out_dir, exist_ok=True)
  plots = plot(rows, out_dir, prefix) if rows else []
  with open(out, 'w') as f:
    head = provenance + (f'\n{rendered}' if rendered else '')
    f.write(f'# Decoder report\n\n{head}\n\n{markdown(rows, skipped, plots, setup)}\n')
  saved = [dict(dataclasses.asdict(r), tokens=[]) for r in rows]
  with open(os.path.join(out_dir, f'{prefix}.json'), 'w') as f:
    json.dump({'provenance': provenance, 'setup': setup, 'rows': saved,
               'skipped': list(map(list, skipped))}, f, indent=1)
  return [out, *plots, f'{prefix}.json']


def replot(out: str) -> list[str]:
  """Rewrites the markdown and plots of a previous run from its JSON."""
  import json  # pylint: disable=g-import-not-at-top
  path = os.path.splitext(out)[0] + '.json'
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--replot needs {path} from an earlier run.')
  with open(path) as f:
    saved = json.load(f)
  rows = [Row(**r) for r in saved['rows']]
  provenance = common.with_commit_line(saved['provenance'])
  import datetime  # pylint: disable=g-import-not-at-top
  when = f'{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC'
  rendered = (f'- rendered: from {os.path.basename(path)} by `python -m benchmarks.report '
              f'--replot` ({when}, commit {common.git_commit()}); the figures are those of '
              'the run above')
  return write(out, rows, [tuple(x) for x in saved['skipped']], saved['setup'],
               provenance, rendered)


def main(argv, flag_values: dict[str, Any]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  import cli  # pylint: disable=g-import-not-at-top
  cli.quiet_logging(sys.argv)
  v = {k: holder.value for k, holder in flag_values.items()}
  if v['replot']:
    print('Wrote ' + ', '.join(replot(v['out'])))
    return
  models = load_models(v['workdirs'], num_prompts=v['num_prompts'],
                       prompt_chars=v['prompt_chars'])
  judge = (load_models([v['judge']], num_prompts=v['num_prompts'],
                       prompt_chars=v['prompt_chars'])[0] if v['judge'] else None)
  temps = [float(t) for t in v['temperatures']]
  load = os.getloadavg()[0]
  rows, skipped = run_report(
      models, decoders=v['decoders'] or None, temperatures=temps,
      max_new_tokens=v['max_new_tokens'], seed=v['seed'], repeats=v['repeats'],
      extra_workdirs=dict(item.split('=', 1) for item in v['models']),
      settings=parse_settings(v['set']), judge=judge)
  judge_name = (judge or next((m for m in models if m.objective == 'ar'), models[0])).name
  setup = (f'Models: {", ".join(f"`{m.workdir}` ({m.objective})" for m in models)}; judge: '
           f'`{judge_name}`. Prompts: {len(models[0].texts)} held-out documents, first '
           f'{v["prompt_chars"]} characters; {v["max_new_tokens"]} new tokens, batch of all '
           f'prompts, median of {v["repeats"]} timed runs; temperatures '
           f'{", ".join(map(str, temps))}, seed {v["seed"]}. Speed ratios are from one run on '
           'one machine; absolute tokens/s only mean something on a GPU/TPU. Host load '
           f'average at the start: {load:.1f} on {os.cpu_count()} cores (a loaded host makes '
           'the timings noisy).')
  print('Wrote ' + ', '.join(write(v['out'], rows, skipped, setup, common.provenance())))


if __name__ == '__main__':
  _FLAGS = define_flags()
  app.run(lambda argv: main(argv, _FLAGS))
