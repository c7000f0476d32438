"""Leapfrog data: tokenizers, local-file TFDS corpora, grain pipelines.

Imports only numpy, tensorflow_datasets, grain, tokenizers and the standard
library; TensorFlow is never imported or needed.

    tok = data.make_tokenizer('byte')
    cfg = data.DataConfig(name='python_stdlib', seq_len=256, batch_size=16)
    it = data.make_train_iterator(cfg, tok)          # {'tokens': int32 [16, 257]}
    state = it.get_state()                           # JSON dict; it.set_state(state)
    evals = data.make_eval_batches(cfg, tok, max_batches=4)
"""

from data.pipeline import (DataConfig, TrainIterator, load_texts,
                           make_eval_batches, make_train_iterator,
                           process_rows, token_counts,
                           tokenize_document)
from data.sources import (ENV_DATA_DIR, TextSource, load_source, prepare,
                          resolve_data_dir)
from data.tokenizers import (KINDS, SPECIAL_TOKENS, BPETokenizer,
                             ByteTokenizer, HFTokenizer, Tokenizer,
                             load_tokenizer, make_tokenizer, train_bpe)

__all__ = [
    'DataConfig', 'TrainIterator', 'load_texts', 'make_eval_batches',
    'make_train_iterator', 'process_rows', 'token_counts', 'tokenize_document',
    'ENV_DATA_DIR', 'TextSource',
    'load_source', 'prepare', 'resolve_data_dir', 'KINDS', 'SPECIAL_TOKENS',
    'BPETokenizer', 'ByteTokenizer', 'HFTokenizer', 'Tokenizer',
    'load_tokenizer', 'make_tokenizer', 'train_bpe',
]
