"""Latent and soft-token reasoning decoders (issue 6); see docs/latent.md.

  feedback.py     what is fed back: discrete, concept (Soft Thinking), full mixture, hidden
                  (Coconut), gumbel / dirichlet noisy mixtures, pause tokens
  controllers.py  natural close, fixed thoughts, Cold Stop, SwiReasoning switches
  loop.py         the one decode loop (per-row modes; one compile serves every mode)
  decoders.py     registered decoders: latent, soft_thinking, swireasoning, coconut,
                  pause_thinking
  cntp.py         CNTP: entropy-triggered trials on forked caches, lowest perplexity kept
  routing.py      small-large routing: GlimpRouter (step level) and an R2R token router
  arbitrage.py    Arbitrage: step-level routing by a router's predicted large-model advantage,
                  and its advantage labels
  pipo.py         PIPO: two-token chunks in, two tokens out, a confidence head in place of a
                  verifier
"""

from decoding.latent import arbitrage
from decoding.latent import cntp
from decoding.latent import decoders
from decoding.latent import pipo
from decoding.latent import routing
