"""Diffusion decoders over the shared Transformer (masked diffusion, block diffusion, WeDLM).

  llada        LLaDA low-confidence remasking, semi-autoregressive blocks (tokens_per_step,
               ordering); tokens_per_step=1 + ordering='confidence' is the one-token-per-step
               reference.
  fast_dllm    Fast-dLLM threshold decoding with cache='none'|'prefix'|'dual' and delay.
  localleap    anchors + relaxed threshold in a neighbourhood.
  ete          Explore-Then-Exploit: threshold + an information budget, cross-block.
  freedave     lossless draft-and-verify: equals llada(tokens_per_step=1) token for token.
  wedlm        WeDLM streaming: sliding mask window, exact causal KV cache.
  diffuspec    a diffusion drafter, causal-consistency path search, AR verification.
  guided_diffusion  a small AR model chooses which tokens to unmask.
  learned_unmask  a small policy trained by policy gradient picks the positions to unmask
               (unmask_policy.py; its params are the run's 'unmask_policy' tree).
  assd         any-subset speculative decoding of an any-subset AR model (kind any_order):
               lossless against sequential decoding in the same order.
  insertion    insertion LM (kind insertion, ILM): one (gap, token) insertion per forward,
               anywhere after the prompt or inside its tail (insert_from), until the stop
               signal or the length cap (insertion.py).
  ctrldiff     CtrlDiff: block diffusion whose block size a learned predictor picks per block
               (ctrldiff.py; its params are the run's 'ctrldiff' tree); force_size=b is
               fixed-size block diffusion, token for token `llada` with block_causal=1;
               guidance_scale > 0 steers it with an attribute classifier (guidance.py; the
               run's 'attribute' tree).
  bitlm        BitLM (kind bitlm): a bitwise diffusion head fills K tokens' binary codes per
               backbone forward of a causal model (bitlm.py; the run's 'bitlm' tree).

See `canvas.py` for the layout, the shift and the common settings (mask_id, shift,
block_causal, block_size; -1 = take them from the model's `models.kind.ModelKind` via
`for_model`, which also refuses a model of a kind the decoder cannot read).
"""

from decoding.diffusion import assd
from decoding.diffusion import decoders
from decoding.diffusion import diffuspec
from decoding.diffusion import freedave
from decoding.diffusion import guided
from decoding.diffusion import insertion
from decoding.diffusion import unmask_policy
from decoding.diffusion import wedlm
from decoding.diffusion import ctrldiff
from decoding.diffusion import bitlm
