"""Online step of CMeRT (:class:`oad.models.cmert.CMeRT`): one chunk per call, exactly
:meth:`CMeRT.forward_video <oad.models.cmert.CMeRT.forward_video>`'s scores.

Chunk ``t`` is scored from the window ``ws = max(0, t - W + 1) .. t``, the ``K`` context chunks before ``ws``
(chunk 0 where there are none) and the long memory of ``ws`` (the reference test sampler,
:meth:`CMeRT.long_memory_indices`). The reference has no stream mode: its batch inference re-encodes the
whole long memory (feature heads and projections of all ``N + K + W`` chunks) for every chunk.

What is kept per stream (as LSTR's step, :class:`oad.online.lstr.LSTRStep`): for each of the last ``L + W``
chunks the first compression stage's per-chunk terms (the learned queries' scores against the chunk's key and
its value projection; the queries' own projections are constants), and the work head's outputs of the last
``K + W`` chunks. So each chunk goes through both feature heads and the key/value projections once.

What is recomputed every step (exact; nothing cheaper is: the long-memory grid moves by one chunk each step,
every work token changes position in its window, and the decoder and refinement see all of them):

- stage-1 attention over the ``N`` gathered keys (the only term that grows with ``N``) and the rest of the
  compression (stage 1's output projection and FFN, stage 2 on its queries);
- the generation decoder (``G`` queries over the compressed memory; their first self-attention block is a
  constant, computed once);
- the work decoder over the ``K + W`` context and work tokens and the ``A`` anticipation queries; the
  refinement layer for the last work row and the anticipation rows (its keys are all rows); the classifier
  on those ``1 + A`` rows.

At the THUMOS size: 4.1 GFLOP per chunk, against 9.0 GFLOP for a re-encode of the window (the reference
forward of ``N + K + W`` chunks), which its batch inference runs for every chunk.

FLOPs and timings per chunk at paper size: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from oad.online.lstr import LSTRStep


class CMeRTStep(LSTRStep):
    """CMeRT for ``n`` streams stepped together, equal to ``CMeRT.forward_video`` on each stream.

    The long memory's per-chunk terms and their gathering are LSTR's step's; the work-head ring also holds
    the ``K`` context chunks. With ``int8`` it runs a :func:`oad.online.lstr.quantize_lstr` copy (CPU).
    """

    def __init__(self, net: nn.Module, device: torch.device, dtype: torch.dtype, int8: bool = False):
        super().__init__(net, device, dtype, int8)
        self.lookback = self.net.context  # the K context chunks before each window
        with torch.no_grad():
            self.gen_tgt = self.net.generation_constant()

    def score(self, work: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Context and work tokens plus anticipation, generation and refinement: ``(n, C)``, ``(n, A, C)``."""
        return self.net.score_windows(work, memory, self.gen_tgt)


__all__ = ["CMeRTStep"]
