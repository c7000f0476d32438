"""Tensor-by-tensor conversion between Hugging Face checkpoints and our parameter tree.

HF Linear weights are [out, in]; ours are einsum operands with named axes:

| HF tensor (layer i: `model.layers.{i}.`) | HF shape     | ours (`layer_{i}/`)   | our shape  |
|------------------------------------------|--------------|-----------------------|------------|
| model.embed_tokens.weight                | [V, D]       | embed/embedding       | [V, D]     |
| self_attn.q_proj.weight                  | [H*Dh, D]    | attn/q                | [D, H, Dh] |
| self_attn.k_proj / v_proj .weight        | [K*Dh, D]    | attn/k, attn/v        | [D, K, Dh] |
| self_attn.o_proj.weight                  | [D, H*Dh]    | attn/o                | [H, Dh, D] |
| self_attn.{q,k,v}_proj.bias              | [H*Dh|K*Dh]  | attn/{q,k,v}_bias     | [H|K, Dh]  |
| self_attn.{q,k}_norm.weight              | [Dh]         | attn/{q,k}_norm/scale | [Dh]       |
| input_ / post_attention_ layernorm       | [D]          | attn_norm, mlp_norm   | [D]        |
| mlp.gate_proj / up_proj .weight          | [F, D]       | mlp/gate, mlp/up      | [D, F]     |
| mlp.down_proj.weight                     | [D, F]       | mlp/down              | [F, D]     |
| model.norm.weight                        | [D]          | final_norm/scale      | [D]        |
| lm_head.weight (untied only)             | [V, D]       | lm_head               | [D, V]     |

Both RoPE conventions are rotate-half, so q/k need no permutation. Only one tensor is
converted at a time: imports read it from disk, exports produce it just before writing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import numpy as np

from models import config as config_lib
from models.hf import config_map
from models.hf import safetensors_io

Path = tuple[str, ...]
IGNORED_SUFFIXES = ('rotary_emb.inv_freq',)


class MissingTensorsError(ValueError):
  """Tensors the architecture needs are absent (or unexpected ones present)."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """One tensor: our path, the HF name, the HF shape and the two layout maps."""
  path: Path
  hf_name: str
  hf_shape: tuple[int, ...]
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


def _linear_in(*out_shape: int) -> tuple[Callable, Callable]:
  """HF [prod(out), in] <-> ours [in, *out]."""
  def to_ours(w):
    return w.T.reshape(w.shape[1], *out_shape)

  def to_hf(w):
    return w.reshape(w.shape[0], -1).T
  return to_ours, to_hf


def _linear_out(*in_shape: int) -> tuple[Callable, Callable]:
  """HF [out, prod(in)] <-> ours [*in, out]."""
  def to_ours(w):
    return w.T.reshape(*in_shape, w.shape[0])

  def to_hf(w):
    return w.reshape(-1, w.shape[-1]).T
  return to_ours, to_hf


def _transpose() -> tuple[Callable, Callable]:
  """HF [out, in] <-> ours [in, out]."""
  return (lambda w: w.T), (lambda w: w.T)


def _same() -> tuple[Callable, Callable]:
  return (lambda w: w), (lambda w: w)


def _reshape(*shape: int) -> tuple[Callable, Callable]:
  return (lambda w: w.reshape(shape)), (lambda w: w.reshape(-1))


def entries(cfg: config_lib.ModelConfig, *, qkv_bias_tensors: bool | None = None
            ) -> list[Entry]:
  """Every tensor of `cfg` in HF order. `qkv_bias_tensors` overrides whether q/k/v biases
  exist on the HF side (Qwen2 always has them; zeros when our model has none)."""
  D, H, K, Dh, F, V = (cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                       cfg.mlp_dim, cfg.vocab_size)
  with_bias = cfg.qkv_bias if qkv_bias_tensors is None else qkv_bias_tensors
  out = [Entry(('embed', 'embedding'), 'model.embed_tokens.weight', (V, D), *_same())]
  for i in range(cfg.num_layers):
    p, a, m = f'model.layers.{i}.', f'model.layers.{i}.self_attn.', f'model.layers.{i}.mlp.'
    L = f'layer_{i}'
    out += [
        Entry((L, 'attn_norm', 'scale'), p + 'input_layernorm.weight', (D,), *_same()),
        Entry((L, 'attn', 'q'), a + 'q_proj.weight', (H * Dh, D), *_linear_in(H, Dh)),
        Entry((L, 'attn', 'k'), a + 'k_proj.weight', (K * Dh, D), *_linear_in(K, Dh)),
        Entry((L, 'attn', 'v'), a + 'v_proj.weight', (K * Dh, D), *_linear_in(K, Dh)),
        Entry((L, 'attn', 'o'), a + 'o_proj.weight', (D, H * Dh), *_linear_out(H, Dh)),
    ]
    if with_bias:
      out += [
          Entry((L, 'attn', 'q_bias'), a + 'q_proj.bias', (H * Dh,), *_reshape(H, Dh)),
          Entry((L, 'attn', 'k_bias'), a + 'k_proj.bias', (K * Dh,), *_reshape(K, Dh)),
          Entry((L, 'attn', 'v_bias'), a + 'v_proj.bias', (K * Dh,), *_reshape(K, Dh)),
      ]
    if cfg.qk_norm:
      out += [Entry((L, 'attn', 'q_norm', 'scale'), a + 'q_norm.weight', (Dh,), *_same()),
              Entry((L, 'attn', 'k_norm', 'scale'), a + 'k_norm.weight', (Dh,), *_same())]
    out += [
        Entry((L, 'mlp_norm', 'scale'), p + 'post_attention_layernorm.weight', (D,), *_same()),
        Entry((L, 'mlp', 'gate'), m + 'gate_proj.weight', (F, D), *_transpose()),
        Entry((L, 'mlp', 'up'), m + 'up_proj.weight', (F, D), *_transpose()),
        Entry((L, 'mlp', 'down'), m + 'down_proj.weight', (D, F), *_transpose()),
    ]
  out.append(Entry(('final_norm', 'scale'), 'model.norm.weight', (D,), *_same()))
  if not cfg.tie_embeddings:
    out.append(Entry(('lm_head',), 'lm_head.weight', (V, D), *_transpose()))
  return out


def _o_bias_names(cfg: config_lib.ModelConfig) -> list[str]:
  return [f'model.layers.{i}.self_attn.o_proj.bias' for i in range(cfg.num_layers)]


def check_tensors(reader: safetensors_io.SafetensorsReader, cfg: config_lib.ModelConfig,
                  info: config_map.HFInfo) -> None:
  """Raises MissingTensorsError naming missing / unexpected tensors or wrong shapes."""
  plan = entries(cfg)
  need = {e.hf_name: e.hf_shape for e in plan}
  have = set(reader.names())
  missing = sorted(set(need) - have)
  allowed = set(need) | (set(_o_bias_names(cfg)) if info.o_bias else set())
  if cfg.tie_embeddings:
    allowed.add('lm_head.weight')  # some writers store the tied head anyway
  unexpected = sorted(n for n in have - allowed if not n.endswith(IGNORED_SUFFIXES))
  wrong = [f'{n}: file {list(reader.info(n).shape)}, config implies {list(s)}'
           for n, s in need.items() if n in have and reader.info(n).shape != s]
  problems = []
  if missing:
    problems.append(f'missing tensors ({len(missing)}): {missing[:12]}'
                    + (' ...' if len(missing) > 12 else ''))
  if unexpected:
    problems.append(f'unexpected tensors ({len(unexpected)}), which this architecture does '
                    f'not use: {unexpected[:12]}' + (' ...' if len(unexpected) > 12 else ''))
  if wrong:
    problems.append('shape mismatches: ' + '; '.join(wrong[:12]))
  if problems:
    raise MissingTensorsError(f'{info.architecture} checkpoint does not match its config.json: '
                              + ' | '.join(problems))


def iter_import(reader: safetensors_io.SafetensorsReader, cfg: config_lib.ModelConfig,
                info: config_map.HFInfo, *, vocab_size: int | None = None
                ) -> Iterator[tuple[Path, np.ndarray]]:
  """(our path, array in cfg.param_dtype) one tensor at a time.

  `vocab_size` > cfg.vocab_size pads the embedding rows and head columns with zeros (new
  special tokens of the tokenizer: logit 0, never produced from text).
  """
  check_tensors(reader, cfg, info)
  if info.o_bias:
    for name in _o_bias_names(cfg):
      if name in reader and np.any(reader.get(name) != 0):
        raise config_map.UnsupportedModelError(
            f'{name} is non-zero: an output-projection bias is not supported.')
  dtype = np.dtype(cfg.weight_dtype)
  extra = (vocab_size or cfg.vocab_size) - cfg.vocab_size
  if extra < 0:
    raise ValueError(f'vocab_size {vocab_size} is smaller than the checkpoint\'s '
                     f'{cfg.vocab_size}.')
  for e in entries(cfg):
    x = e.to_ours(reader.get(e.hf_name)).astype(dtype, copy=False)
    if extra and e.path == ('embed', 'embedding'):
      x = np.concatenate([x, np.zeros((extra, x.shape[1]), dtype)], axis=0)
    elif extra and e.path == ('lm_head',):
      x = np.concatenate([x, np.zeros((x.shape[0], extra), dtype)], axis=1)
    yield e.path, x


def set_path(tree: dict[str, Any], path: Path, value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def get_path(tree: Any, path: Path) -> Any:
  for key in path:
    try:
      tree = tree[key]
    except (KeyError, TypeError):
      raise MissingTensorsError(f'Our parameters have no {"/".join(path)}.') from None
  return tree


def export_plans(params: Any, cfg: config_lib.ModelConfig, info: config_map.HFInfo, *,
                 vocab_size: int | None = None, dtype: str = 'float32'
                 ) -> list[safetensors_io.TensorPlan]:
  """Plans for every HF tensor of `params` (our 'model' tree); each is converted when
  written. `vocab_size` < cfg.vocab_size drops trailing (padding) rows."""
  V = vocab_size or cfg.vocab_size
  if V > cfg.vocab_size:
    raise ValueError(f'Export vocab_size {V} exceeds the model\'s {cfg.vocab_size}.')
  np_dtype = safetensors_io.float_dtype(dtype)
  with_bias = cfg.qkv_bias or config_map.ARCHITECTURES[info.architecture] == 'qwen2'
  plans = []
  for e in entries(cfg, qkv_bias_tensors=with_bias):
    shape = e.hf_shape
    if e.path in (('embed', 'embedding'), ('lm_head',)):
      shape = (V, shape[1])

    def produce(e=e):
      if e.path[-1].endswith('_bias') and not cfg.qkv_bias:
        return np.zeros(e.hf_shape, np_dtype)
      x = e.to_hf(np.asarray(get_path(params, e.path), np.float32))
      if e.path in (('embed', 'embedding'), ('lm_head',)):
        x = x[:V]
      return x.astype(np_dtype)
    plans.append(safetensors_io.TensorPlan(e.hf_name, shape, np_dtype, produce))
  if info.o_bias:
    plans += [safetensors_io.TensorPlan(n, (cfg.d_model,), np_dtype,
                                        lambda: np.zeros((cfg.d_model,), np_dtype))
              for n in _o_bias_names(cfg)]
  return plans
