"""MiniROAD: a minimal RNN for online action detection.

Paper: An et al., "MiniROAD: Minimal RNN Framework for Online Action Detection", ICCV 2023.
Reference code: jbistanbul/MiniROAD, ``model/rnn/rnn.py``, class ``MROAD`` (registered "MiniROAD").

Every chunk's fused features (RGB then flow, concatenated) are embedded by ``Linear -> LayerNorm -> ReLU
-> Dropout``, read by a GRU started from a zero state at the first chunk of a video, and the ReLU of its
outputs is classified by one Linear layer. There is no anticipation head. In training only the last step
of each window is supervised (:class:`oad.losses.MiniROADCriterion`); at test time a whole video
is one forward pass from the zero state, which is exactly the online recursion one chunk at a time.

Faithful to the reference: same layers, order, creation order (``gru``, ``layer1``, ``f_classification``:
the same seed gives the same PyTorch default initialisation) and parameter names, so its checkpoints load
as they are (``from_reference`` only drops a DataParallel ``module.`` prefix). Differences:

- The two feature streams arrive already concatenated, ``(B, T, rgb + flow)``; the reference's
  ``forward(rgb_input, flow_input)`` concatenates them itself (``--no_rgb``/``--no_flow`` only change
  ``in_dim``).
- The outputs are raw logits in train and in eval mode. The reference returns softmax probabilities in
  eval mode under the name ``'logits'`` (its quirk 5); the evaluation here applies the softmax itself.
- ``forward`` takes the ``mask`` of the window data pipeline and ignores it: the reference trains with
  ``window - 1`` zero rows in front of each video and feeds them through ``layer1`` and the GRU like real
  chunks (``layer1`` maps a zero row to a non-zero embedding), and the pipeline here left-pads with zeros
  too, so ignoring the mask computes what the reference computes.
- A stateful API the reference lacks: ``init_state``/``step`` (one chunk, the GRU state carried) and
  ``forward_dense(x, h0)``; the streaming runner's step is :class:`oad.online.miniroad.MiniROADStep`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from oad.models.base import OnlineModel


class MiniROAD(OnlineModel):
    """MiniROAD: embedding layer, GRU and a linear classifier on the ReLU of the GRU outputs.

    Attributes:
        samples: strided windows (128 chunks every 4, random offset per epoch, zero padding in front):
            only the last step of a training window is supervised, nothing left out.
        num_queries: 0: no anticipation (the future outputs have an empty ``Q`` axis).
        future_offset: 1, the convention of the other models; unused with ``num_queries`` 0.
        online_step: the streaming step class (``"module:Class"``).
        window, stride: the training window length and stride, read by the data pipeline; the model
            itself runs on sequences of any length.
    """

    samples = "oad.data.samples:strided_windows"
    num_queries = 0
    future_offset = 1
    online_step = "oad.online.miniroad:MiniROADStep"

    # registry (oad/models/registry.py): the tests' tiny instance, int8 bounds, benchmark rows
    tiny = dict(embedding_dim=32, hidden_dim=24, window=8)
    int8_tolerance = {"fp32": 0.03, "offline": 0.03}
    paper_variants = {"MiniROAD": {}}

    @staticmethod
    def recognises_reference(names: set[str]) -> bool:
        return "gru.weight_ih_l0" in names and "layer1.0.weight" in names

    def __init__(
        self,
        *,
        in_dim: int,
        num_classes: int = 22,
        embedding_dim: int = 2048,
        hidden_dim: int = 1024,
        num_layers: int = 1,
        dropout: float = 0.2,
        window: int = 128,
        stride: int = 4,
    ) -> None:
        """Builds the network with PyTorch's default initialisation, as the reference does.

        Args:
            in_dim: feature size of one chunk ``D`` (the reference's ``input_dim``; THUMOS 2048 + 1024 =
                3072, TVSeries and FineAction 2048 + 2048).
            num_classes: number of classes ``C`` (``num_classes``; THUMOS 22 with Background and
                Ambiguous, TVSeries 31, FineAction 107).
            embedding_dim: output size of ``layer1`` and the GRU input size (``embedding_dim``).
            hidden_dim: GRU hidden size ``H`` (``hidden_dim``).
            num_layers: GRU layers (``num_layers``; no dropout between them, as in the reference).
            dropout: dropout rate at the end of ``layer1`` (``dropout``).
            window: training window length (``window_size``), kept for the data pipeline.
            stride: training window stride (THUMOS/TVSeries 4, FineAction 3), kept for the data pipeline.
        """
        super().__init__()
        self.in_dim = in_dim
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.window = window
        self.stride = stride

        # Creation order as in the reference (gru, layer1, classifier), so a seed gives the same weights.
        self.gru = nn.GRU(embedding_dim, hidden_dim, num_layers, batch_first=True)
        self.layer1 = nn.Sequential(
            nn.Linear(in_dim, embedding_dim),
            nn.LayerNorm(embedding_dim),
            nn.ReLU(),
            nn.Dropout(p=dropout),
        )
        self.f_classification = nn.Sequential(nn.Linear(hidden_dim, num_classes))

    def init_state(
        self,
        n: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Zero GRU state before the first chunk (the reference's ``h0``).

        Args:
            n: number of sequences ``N``.
            device: defaults to the parameters' device.
            dtype: defaults to the parameters' dtype.

        Returns:
            ``(num_layers, N, H)`` zeros.
        """
        ref = self.f_classification[0].weight
        device = ref.device if device is None else device
        dtype = ref.dtype if dtype is None else dtype
        return torch.zeros(self.num_layers, n, self.hidden_dim, device=device, dtype=dtype)

    def forward_dense(self, x: Tensor, h0: Tensor | None = None) -> Tensor:
        """Logits of every step of the sequences.

        Args:
            x: ``(B, T, D)`` chunk features, oldest first.
            h0: optional ``(num_layers, B, H)`` GRU state before the first chunk; zeros when None.

        Returns:
            ``(B, T, C)`` raw logits, in train and eval mode (the reference's eval mode returns softmax).
        """
        e = self.layer1(x)  # (B, T, D) -> (B, T, E)
        ht, _ = self.gru(e, h0)  # (B, T, H); h0 None: zeros, as the reference's h0
        return self.f_classification(torch.relu(ht))  # (B, T, C)

    def step(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """One chunk of ``N`` streams, carrying the GRU state.

        Args:
            x: ``(N, D)`` features of the new chunk.
            h: ``(num_layers, N, H)`` state from :meth:`init_state` or the previous step.

        Returns:
            ``logits (N, C)`` of the chunk and the new state ``(num_layers, N, H)``.
        """
        e = self.layer1(x).unsqueeze(1)  # (N, D) -> (N, 1, E)
        ht, h = self.gru(e, h)  # (N, 1, H), (num_layers, N, H)
        return self.f_classification(torch.relu(ht[:, 0])), h  # (N, C)

    def forward_video(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Online scores of a whole video: each chunk from the chunks up to it, from a zero state.

        Args:
            features: ``(T, D)`` the video's chunk features.

        Returns:
            ``logits (T, C)`` and ``future_logits (T, 0, C)`` (MiniROAD does not anticipate).
        """
        logits = self.forward_dense(features.unsqueeze(0))[0]  # (T, D) -> (1, T, D) -> (T, C)
        return logits, logits.new_zeros(logits.shape[0], 0, self.num_classes)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Logits of the last chunk of each training window (the only supervised step).

        Args:
            x: ``(B, L, D)`` chunk features, the last one being the current chunk; left padding is zeros.
            mask: ``(B, L)`` bool of the window pipeline, ignored: the reference feeds its zero padding rows
                through the network like real chunks.

        Returns:
            ``logits (B, C)`` of the last chunk and ``future_logits (B, 0, C)``.
        """
        logits = self.forward_dense(x)[:, -1]  # (B, L, C) -> (B, C)
        return logits, logits.new_zeros(logits.shape[0], 0, self.num_classes)

    def training_logits(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self(batch["features"])

    # -- reference checkpoints -------------------------------------------------------------------------
    @staticmethod
    def reference_to_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Reference parameter names -> this module's: the same, less a DataParallel ``module.`` prefix."""
        return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}

    @classmethod
    def reference_config(cls, state_dict: Mapping[str, Tensor], **overrides) -> dict:
        """Constructor arguments of a reference state dict: sizes from the tensors, then ``overrides``."""
        sd = cls.reference_to_state_dict(state_dict)
        kwargs = {
            "in_dim": sd["layer1.0.weight"].shape[1],
            "embedding_dim": sd["layer1.0.weight"].shape[0],
            "hidden_dim": sd["gru.weight_hh_l0"].shape[1],
            "num_layers": sum(1 for k in sd if k.startswith("gru.weight_ih_l")),
            "num_classes": sd["f_classification.0.weight"].shape[0],
        }
        kwargs.update(overrides)
        return kwargs

    @classmethod
    def from_reference(cls, state_dict: Mapping[str, Tensor], **overrides) -> MiniROAD:
        """Builds a MiniROAD from a reference ``MROAD`` state dict (``model.state_dict()`` of its checkpoints).

        ``in_dim``, ``embedding_dim``, ``hidden_dim``, ``num_layers`` and ``num_classes`` are read off the
        tensors; ``dropout``, ``window`` and ``stride`` come from ``overrides`` or the defaults.

        Args:
            state_dict: the reference's parameter names (``gru.*``, ``layer1.*``, ``f_classification.*``),
                optionally with DataParallel's ``module.`` prefix.
            **overrides: constructor keyword arguments.

        Returns:
            The model with the reference weights loaded (strict).
        """
        model = cls(**cls.reference_config(state_dict, **overrides))
        model.load_state_dict(cls.reference_to_state_dict(state_dict), strict=True)
        return model


__all__ = ["MiniROAD"]
