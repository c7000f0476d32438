"""Shared defaults for experiment configs (imports ml_collections only).

Model size presets (byte-level vocabulary unless said otherwise):
  test   ~0.1M params, compiles in seconds: unit tests.
  tiny   ~0.8M params: the CPU quickstart (trains in about 3 minutes on 2 cores).
  mem    ~32M params (126 MB in float32): decoding is memory-bound on a CPU (weights far
         beyond a 32 MB last-level cache), the regime of real LLMs; for speed work with
         random weights (benchmarks/forward_cost.py, spec_system.py).
  small  ~125M params: a single GPU/TPU host.
  base   ~1B params: GPU/TPU (Llama-3.2-1B-like shape with a 32k BPE vocabulary).
"""

import ml_collections

PRESETS = {
    'test': dict(d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                 mlp_dim=128, max_seq_len=256),
    'tiny': dict(d_model=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
                 mlp_dim=384, max_seq_len=1024),
    'mem': dict(d_model=512, num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64,
                mlp_dim=2048, max_seq_len=2048),
    'small': dict(d_model=768, num_layers=12, num_heads=12, num_kv_heads=4, head_dim=64,
                  mlp_dim=2048, max_seq_len=2048),
    'base': dict(d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
                 mlp_dim=8192, max_seq_len=4096),
}


def model_config(size: str, **overrides) -> ml_collections.ConfigDict:
  """The `model` section for a preset; vocab_size 0 = taken from the tokenizer."""
  if size not in PRESETS:
    raise ValueError(f'Unknown size {size!r}; presets: {sorted(PRESETS)}.')
  d = dict(vocab_size=0, rope_theta=10_000.0, qk_norm=False, qkv_bias=False,
           tie_embeddings=True, norm_eps=1e-6, dtype='float32', param_dtype='float32',
           init_std=0.02, layer_types=(), attention_impl='auto', remat='none')
  d.update(PRESETS[size])
  d.update(overrides)
  return ml_collections.ConfigDict(d)


def base_config() -> ml_collections.ConfigDict:
  """Every section a training run reads; experiment files override what differs."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.objective = 'ar'
  c.model = model_config('test')
  c.tokenizer = ml_collections.ConfigDict(dict(kind='byte', vocab_size=0, path=''))
  c.data = ml_collections.ConfigDict(dict(
      name='python_stdlib', glob='', data_dir='', text_key='text', seq_len=128,
      batch_size=16, shuffle_seed=0, train_split='train', eval_split='validation'))
  c.train = ml_collections.ConfigDict(dict(
      steps=1000, learning_rate=3e-3, min_lr_ratio=0.1, warmup_steps=100,
      weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, grad_clip=1.0, grad_accum=1,
      log_every=25, eval_every=250, eval_batches=8, checkpoint_every=250,
      keep_checkpoints=3, async_checkpointing=True, progress_bar=True,
      stop_after_steps=0))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  return c


def lm_run_settings(c: ml_collections.ConfigDict, size: str) -> None:
  """Sequence length, batch, tokenizer and schedule of a language-model run of preset `size`."""
  if size == 'test':
    c.data.seq_len, c.data.batch_size = 32, 4
    c.train.update(steps=20, warmup_steps=2, log_every=5, eval_every=10, eval_batches=2,
                   checkpoint_every=10, progress_bar=False)
  elif size == 'tiny':
    c.data.seq_len, c.data.batch_size = 128, 16
    c.train.update(steps=600, learning_rate=3e-3, warmup_steps=60, log_every=50,
                   eval_every=200, eval_batches=8, checkpoint_every=200)
  elif size == 'mem':  # memory-bound on a CPU: slow to train there (about 0.15 s a step)
    c.data.seq_len, c.data.batch_size = 256, 16
    c.train.update(steps=4000, learning_rate=1e-3, warmup_steps=200, log_every=50,
                   eval_every=500, eval_batches=8, checkpoint_every=500)
  elif size in ('small', 'base'):  # accelerator runs: BPE vocabulary, bf16 compute
    seq_len, batch, steps, lr, every = ((1024, 64, 20_000, 1e-3, 1000) if size == 'small' else
                                        (2048, 128, 50_000, 5e-4, 2000))
    c.tokenizer.update(kind='bpe', vocab_size=32768)
    c.model.dtype = 'bfloat16'
    c.data.seq_len, c.data.batch_size = seq_len, batch
    c.train.update(steps=steps, learning_rate=lr, warmup_steps=every, log_every=100,
                   eval_every=every, eval_batches=16, checkpoint_every=every)


def heads_run_settings(c: ml_collections.ConfigDict, size: str) -> None:
  """Rows, batch and schedule of a run that trains extras beside a frozen target (draft heads,
  masked-input MTP): the `test` preset for unit tests (batch 8: the suite's 8 devices), else
  600 steps of 16 x 128."""
  if size == 'test':
    c.data.seq_len, c.data.batch_size = 32, 8
    c.train.update(steps=20, warmup_steps=2, log_every=5, eval_every=10, eval_batches=2,
                   checkpoint_every=10, progress_bar=False)
  else:
    c.data.seq_len, c.data.batch_size = 128, 16
    c.train.update(steps=600, learning_rate=3e-3, warmup_steps=60, log_every=50,
                   eval_every=200, eval_batches=8, checkpoint_every=200, weight_decay=0.0)
