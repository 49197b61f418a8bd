"""TeSTra: Real-time Online Video Detection with Temporal Smoothing Transformers (Zhao & Krähenbühl,
ECCV 2022, arXiv 2209.09236).

LSTR (:mod:`oad.models.lstr`) with three changes that make the long memory streamable at a cost per chunk
that does not grow with its length:

- The first compression stage's cross-attention uses a temporal kernel: the logit of the key in slot
  ``j`` of ``N`` gets ``+ log(alpha^(N-1-j) + 1e-10)`` (Laplace kernel, the newest key has weight 1;
  ``alpha = 1`` or ``kernel="box"`` is the plain softmax). Since its queries are learned constants, the
  attention is a ratio of two running sums (:mod:`oad.online.testra`).
- No positional encoding on the long memory; the work memory gets positional rows ``0..W-1``.
- The work decoder cross-attends to ``[compressed long memory; work tokens]`` with the mask
  ``[0 | causal]`` (``LONG_MEMORY_INCLUDE_WORK``).

Faithful to the reference code (github.com/zhaoyue-zephyrus/TeSTra, ``models/lstr.py``,
``models/transformer/multihead_attention.py``, THUMOS configs ``testra_long_512_work_8_kinetics_1x_*``):
same parameter names as LSTR (its checkpoints load with no rename) and the reference batch mode
(``forward_video``), including its long-memory sampler, which differs from LSTR's: until the memory is full
the stride grid is anchored at the window start (newest sample ``ws - 4``) instead of at chunk 0, and the
left padding with chunk 0 leaves the last padding slot unmasked, so chunk 0 is then a key too. Differences:

- The reference's object-feature input (unused for visual + motion) is dropped.
- ``kernel`` names the kernel; the reference's ``ENC_ATTENTION_DECAY`` is ``alpha``. The kernel's decay
  table is sized by the actual number of keys and any number of heads (the reference caches it for the
  first call and hard-codes 8 heads in its stream mode).
- Videos shorter than ``W`` are scored as one shorter first window (reference: zero scores).
- Streaming (:class:`oad.online.testra.TeSTraStep`) equals this batch mode; the reference stream mode does
  not (see that module).
"""

from __future__ import annotations

import torch
from torch import Tensor

from oad.models.lstr import LSTR

KERNEL_EPS = 1e-10  # added to the kernel weights before the log, as in the reference


class TeSTra(LSTR):
    """TeSTra: LSTR with a Laplace (or box) kernel in the first compression stage.

    Args:
        kernel: ``"laplace"`` (weights ``alpha^age``) or ``"box"`` (uniform over the ``N`` keys).
        alpha: Laplace decay per long-memory token (0.97 on THUMOS); must be in ``(0, 1]``. Ignored for
            ``"box"``; ``alpha = 1`` is the box kernel.
        **kwargs: keyword arguments of :class:`~oad.models.lstr.LSTR` (same names and defaults).
    """

    online_step = "oad.online.testra:TeSTraStep"
    samples = "oad.data.samples:testra_memory_windows"
    long_pe = False
    include_work = True

    # registry (oad/models/registry.py): the tests' tiny instance, int8 bounds (its running sums
    # exponentiate the scores, so quantization noise is amplified), benchmark rows
    tiny = dict(d_model=32, num_heads=4, ffn_dim=48, long_memory=16, work_memory=4, enc_queries=(4, 4), alpha=0.9)
    int8_tolerance = {"fp32": 0.15, "offline": 0.15}
    paper_variants = {"TeSTra (long 2048)": {}}

    def __init__(self, *, kernel: str = "laplace", alpha: float = 0.97, **kwargs):
        if kernel not in ("laplace", "box"):
            raise ValueError(f"kernel must be 'laplace' or 'box', got {kernel!r}")
        if kernel == "laplace" and not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        super().__init__(**kwargs)
        self.kernel = kernel
        self.alpha = 1.0 if kernel == "box" else float(alpha)

    def kernel_log_weight(self, num_keys: int, *, device=None, dtype=torch.float32) -> Tensor | None:
        """``(1, 1, 1, S)`` additive logits ``log(alpha^(S-1-j) + 1e-10)``; None for the box kernel.

        Computed as the reference does (a float32 Vandermonde row, then the log), so the values agree bitwise.
        """
        if self.alpha == 1.0:
            return None
        decay = torch.vander(torch.tensor([self.alpha]), N=num_keys)[0]  # alpha^(S-1) ... alpha^0
        return torch.log(decay + KERNEL_EPS).to(device=device, dtype=dtype)[None, None, None, :]

    def long_memory_indices(self, work_start: Tensor) -> tuple[Tensor, Tensor]:
        """Long-memory chunk indices and validity of the windows starting at ``work_start``.

        Reference TeSTra ``uniform_sampler``: ``arange(ws - L, ws)[::stride]`` with a negative start moved to
        ``ws % stride`` (so the newest sample is always ``ws - stride``), left-padded with chunk 0 up to ``N``;
        the mask hides every slot before the last one holding chunk 0. When ``ws % stride != 0`` chunk 0 is
        not on the grid and that last slot is padding, yet unmasked.

        Args:
            work_start: ``(K,)`` int64 window starts ``ws >= 0``.

        Returns:
            ``indices (K, N)`` int64 and ``valid (K, N)`` bool.
        """
        N, L, s = self.num_long, self.long_memory, self.long_stride
        ws = work_start.long()[:, None]
        full = ws >= L
        start = torch.where(full, ws - L, ws % s)
        n = torch.where(full, torch.full_like(ws, N), ws // s)  # real samples
        j = torch.arange(N, device=ws.device)[None]
        off = j - (N - n)
        indices = torch.where(off >= 0, start + s * off, torch.zeros_like(off))
        on_grid = (start == 0) & (n >= 1)  # chunk 0 is a real sample: the padding before it is masked
        first_valid = torch.where(on_grid, N - n, torch.clamp(N - n - 1, min=0))
        return indices, j >= first_valid


__all__ = ["TeSTra"]
