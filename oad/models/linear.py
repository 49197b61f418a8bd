"""A single-chunk linear classifier: the floor every temporal model has to beat.

Scores chunk ``t`` from the features of chunk ``t`` alone (window 1, no history). Its "future" logits
come from a second linear map of the same chunk, so it plugs into the same data, loss and evaluation as
OadTR (``forward(x) -> (logits, future_logits)``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from oad.models.base import OnlineModel, score_windows


class ChunkLinear(OnlineModel):
    """Linear classifier on the newest chunk of the window.

    Args:
        in_dim: feature size per chunk.
        num_classes: number of classes.
        window: kept for the data pipeline's contract; only the newest chunk is used (use 1).
        num_queries: number of future chunks scored (from the same chunk).
    """

    samples = "oad.data.samples:last_chunk_windows"
    online_step = "oad.online.window:WindowStep"
    export_step = "oad.online.window:WindowExportStep"
    future_offset = 1

    # registry (oad/models/registry.py): the tests' tiny instance, int8 bounds, benchmark rows
    tiny = dict(window=3, num_queries=4)
    int8_tolerance = {"fp32": 0.04, "offline": 0.05}
    paper_variants = {"linear": {}}

    def __init__(self, *, in_dim: int, num_classes: int = 22, window: int = 1, num_queries: int = 8):
        super().__init__()
        self.in_dim, self.num_classes, self.window, self.num_queries = in_dim, num_classes, window, num_queries
        self.classifier = nn.Linear(in_dim, num_classes)
        self.future = nn.Linear(in_dim, num_queries * num_classes)

    def embed(self, x: Tensor) -> Tensor:
        return x

    def forward_embedded(self, e: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        last = e[:, -1]  # (B, L, D) -> (B, D): the newest chunk only
        future = self.future(last).view(-1, self.num_queries, self.num_classes)  # (B, Q*C) -> (B, Q, C)
        return self.classifier(last), future

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x (B, L, in_dim)`` -> ``logits (B, C)``, ``future_logits (B, Q, C)``."""
        return self.forward_embedded(x, mask)

    def training_logits(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self(batch["features"], batch["mask"])

    @torch.no_grad()
    def forward_video(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return score_windows(self, features)
