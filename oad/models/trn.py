"""TRN: the Temporal Recurrent Network baseline for online action detection.

Paper: Xu et al., "Temporal Recurrent Networks for Online Action Detection", ICCV 2019.
Reference code: xumingze0308/TRN.pytorch, ``GeneralizedTRN`` (THUMOS, two-stream features).

At every chunk an LSTM encoder reads the fused features of the chunk together with the mean of
the decoder's anticipated features from the previous step; after each encoder step an LSTM decoder,
started from the encoder state, rolls ``num_queries`` steps into the future, each step scored by the
same classifier and fed with its own scores. The encoder and decoder scores are both supervised.

Differences from the reference code:
    * The two feature streams arrive already concatenated, ``(B, L, rgb + flow)``; the reference's
      ``feature_extractor`` (concatenation then ``input_linear``) is the single ``input_linear`` here.
      Parameter names are otherwise the reference's, so ``from_reference`` only renames that prefix.
    * One ``nn.Dropout`` module serves the four dropout sites (encoder input, decoder input, before the
      classifier in both); all have the same rate in the reference, so the computation is the same.
    * An optional ``mask`` lets a window start with left padding: at a padded step the recurrent
      state (``h``, ``c``, ``future_input``) is kept unchanged, so the valid steps give the same
      outputs as running only the valid chunks from a zero state. The reference has no padding.
    * ``forward_dense`` loops over ``step``, so the windowed (training) and the streaming (one chunk at a
      time) paths are one code path and give identical outputs.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from oad.models.base import OnlineModel

TRNState = tuple[Tensor, Tensor, Tensor]


class TRN(OnlineModel):
    """Temporal Recurrent Network (encoder LSTM + anticipating decoder LSTM).

    Trained on dense windows (``samples``): every step of a window is supervised, encoder and decoder.

    Attributes:
        future_offset: decoder step ``j`` (0-based) after encoder step ``t`` predicts chunk
            ``t + j + future_offset``; the reference's first decoder step scores the current chunk again.
        window: the training window length (the reference's ``enc_steps``), read by the data pipeline.
    """

    samples = "oad.data.samples:dense_windows"
    online_step = "oad.online.recurrent:RecurrentStep"
    export_step = "oad.online.recurrent:TRNExportStep"
    future_offset = 0

    # registry (oad/models/registry.py): the tests' tiny instance, int8 bounds, benchmark rows
    tiny = dict(hidden_dim=32, num_queries=3, input_norm=True)  # the demo recipe's input layer
    int8_tolerance = {"fp32": 0.03, "offline": 0.0}  # offline: the same (1, D) products, exactly equal
    paper_variants = {"TRN": {}}

    @staticmethod
    def recognises_reference(names: set[str]) -> bool:
        return "enc_cell.weight_ih" in names

    def __init__(
        self,
        *,
        in_dim: int,
        num_classes: int = 22,
        window: int = 64,
        hidden_dim: int = 4096,
        num_queries: int = 8,
        dropout: float = 0.1,
        ignore_index: int | None = 21,
        init: str = "reference",
        input_norm: bool = False,
    ) -> None:
        """Builds the network with the reference initialisation.

        Args:
            in_dim: feature size of one chunk (``D``; 3072 for TSN RGB 2048 + flow 1024).
            num_classes: number of output classes ``C`` including background (and Ambiguous, if any).
            window: training window length (``enc_steps``); the model itself runs on any length.
            hidden_dim: LSTM hidden size ``H`` of the encoder and the decoder.
            num_queries: decoder steps ``Q`` (the reference's ``dec_steps``).
            dropout: dropout rate on the LSTM inputs and before the classifier.
            ignore_index: class excluded from the loss (Ambiguous); kept for the criterion, unused here.
            init: ``"reference"``: every Linear weight ~ N(0, 0.001), as TRN.pytorch (the paper recipe);
                ``"pytorch"``: PyTorch's default initialisation. The reference's tiny weights suit its
                4096-d model trained for 21 epochs; with the small demo model and a few hundred steps
                they stall learning (docs/benchmarks.md), so the demo recipe uses ``"pytorch"``.
            input_norm: a LayerNorm between ``input_linear``'s Linear and its ReLU (not in the reference:
                its parameters are ``input_linear.1``, the ReLU moves to ``input_linear.2``). On non-negative
                inputs with a common offset (post-ReLU features, as real releases are) every Adam step moves
                all pre-activations of a unit together, and at the demo's learning rate half of the input
                units died (never active on validation); the LayerNorm takes out that common shift
                (docs/benchmarks.md section 17). Off in the paper recipe (the reference's layout).
        """
        super().__init__()
        if num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {num_queries}")
        self.in_dim = in_dim
        self.num_classes = num_classes
        self.window = window
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        self.ignore_index = ignore_index

        norm = [nn.LayerNorm(in_dim)] if input_norm else []
        self.input_linear = nn.Sequential(nn.Linear(in_dim, in_dim), *norm, nn.ReLU(inplace=True))
        self.hx_trans = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True))
        self.cx_trans = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(inplace=True))
        self.fusion_linear = nn.Sequential(nn.Linear(num_classes, hidden_dim), nn.ReLU(inplace=True))
        self.future_linear = nn.Sequential(nn.Linear(hidden_dim, in_dim), nn.ReLU(inplace=True))
        # The encoder reads the fused chunk features and the anticipated future features side by side.
        self.enc_cell = nn.LSTMCell(2 * in_dim, hidden_dim)
        self.dec_cell = nn.LSTMCell(hidden_dim, hidden_dim)
        self.classifier = nn.Linear(hidden_dim, num_classes)
        self.drop = nn.Dropout(dropout)

        # Reference ``weights_init``: Linear weights ~ N(0, 0.001); biases and LSTM cells keep PyTorch's
        # default initialisation.
        if init not in ("reference", "pytorch"):
            raise ValueError(f"init must be 'reference' or 'pytorch', got {init!r}")
        self.init = init
        if init == "reference":
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, mean=0.0, std=0.001)

    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> TRNState:
        """Zero state before the first chunk.

        Args:
            batch_size: number of sequences ``B``.
            device: defaults to the parameters' device.
            dtype: defaults to the parameters' dtype.

        Returns:
            ``(h, c, future_input)``: ``(B, H)``, ``(B, H)``, ``(B, D)`` zeros.
        """
        ref = self.classifier.weight
        device = ref.device if device is None else device
        dtype = ref.dtype if dtype is None else dtype
        h = torch.zeros(batch_size, self.hidden_dim, device=device, dtype=dtype)
        c = torch.zeros(batch_size, self.hidden_dim, device=device, dtype=dtype)
        future_input = torch.zeros(batch_size, self.in_dim, device=device, dtype=dtype)
        return h, c, future_input

    def step(
        self, x_t: Tensor, state: TRNState, mask_t: Tensor | None = None
    ) -> tuple[Tensor, Tensor, TRNState]:
        """One encoder step on a new chunk, then the decoder's ``Q`` anticipation steps.

        Args:
            x_t: ``(B, D)`` features of the new chunk.
            state: ``(h, c, future_input)`` from ``init_state`` or the previous ``step``.
            mask_t: optional ``(B,)`` bool, True for a real chunk; where False the state is returned
                unchanged (the outputs there are meaningless).

        Returns:
            ``logits`` ``(B, C)`` of the chunk, ``future_logits`` ``(B, Q, C)`` of the decoder steps, and the
            new state.
        """
        h, c, future_input = state
        fused = self.input_linear(x_t)  # (B, D)
        enc_in = torch.cat((fused, future_input), dim=1)  # (B, D) + (B, D) -> (B, 2D)
        new_h, new_c = self.enc_cell(self.drop(enc_in), (h, c))
        logits = self.classifier(self.drop(new_h))  # (B, C)

        dec_h = self.hx_trans(new_h)
        dec_c = self.cx_trans(new_c)
        dec_in = new_h.new_zeros(new_h.shape[0], self.hidden_dim)  # (B, H)
        future_sum = new_h.new_zeros(new_h.shape[0], self.in_dim)  # (B, D)
        future_logits = []
        for _ in range(self.num_queries):
            dec_h, dec_c = self.dec_cell(self.drop(dec_in), (dec_h, dec_c))
            dec_logits = self.classifier(self.drop(dec_h))  # (B, C)
            future_logits.append(dec_logits)
            # The next decoder input embeds this step's raw scores (no softmax), as in the reference.
            dec_in = self.fusion_linear(dec_logits)
            future_sum = future_sum + self.future_linear(dec_h)
        new_future = future_sum / self.num_queries

        if mask_t is not None:
            keep = mask_t.to(torch.bool).unsqueeze(1)  # (B,) -> (B, 1)
            new_h = torch.where(keep, new_h, h)
            new_c = torch.where(keep, new_c, c)
            new_future = torch.where(keep, new_future, future_input)
        future_logits = torch.stack(future_logits, dim=1)  # Q x (B, C) -> (B, Q, C)
        return logits, future_logits, (new_h, new_c, new_future)

    def forward_dense(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Scores of every step of the sequences, from a zero state.

        Args:
            x: ``(B, L, D)`` chunk features.
            mask: optional ``(B, L)`` bool, True for a real chunk; padding is on the left.

        Returns:
            ``enc_logits`` ``(B, L, C)`` and ``dec_logits`` ``(B, L, Q, C)``, where ``dec_logits[:, t, j]`` is
            decoder step ``j`` after encoder step ``t``. Values at padded steps are meaningless.
        """
        batch_size, length, _ = x.shape
        state = self.init_state(batch_size, device=x.device, dtype=x.dtype)
        enc_logits, dec_logits = [], []
        for t in range(length):
            mask_t = None if mask is None else mask[:, t]
            logits, future_logits, state = self.step(x[:, t], state, mask_t)
            enc_logits.append(logits)
            dec_logits.append(future_logits)
        # L x (B, C) -> (B, L, C); L x (B, Q, C) -> (B, L, Q, C)
        return torch.stack(enc_logits, dim=1), torch.stack(dec_logits, dim=1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Scores of the last chunk of each window.

        Args:
            x: ``(B, L, D)`` chunk features, the last one being the current chunk.
            mask: optional ``(B, L)`` bool, True for a real chunk; padding is on the left.

        Returns:
            ``logits`` ``(B, C)`` of the last chunk and ``future_logits`` ``(B, Q, C)``, the decoder's steps
            after the last encoder step.
        """
        enc_logits, dec_logits = self.forward_dense(x, mask)
        return enc_logits[:, -1], dec_logits[:, -1]

    def training_logits(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Every step of the window: ``(B, L, C)``, ``(B, L, Q, C)`` (dense targets)."""
        return self.forward_dense(batch["features"], batch["mask"])

    def forward_video(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward_videos([features])[0]

    @torch.no_grad()
    def forward_videos(self, features, group: int = 32) -> list[tuple[Tensor, Tensor]]:
        """Every chunk of several videos, the state carried from the first chunk; videos of similar
        lengths are stepped together as one batch (right-padded, padded steps dropped)."""
        order = sorted(range(len(features)), key=lambda i: features[i].shape[0])
        out: list = [None] * len(features)
        for g in range(0, len(order), group):
            idx = order[g : g + group]
            lengths = [features[i].shape[0] for i in idx]
            x = features[idx[0]].new_zeros(len(idx), max(lengths), self.in_dim)  # (B, Tmax, D)
            for b, i in enumerate(idx):
                x[b, : lengths[b]] = features[i]
            state = self.init_state(len(idx), device=x.device, dtype=x.dtype)
            logits, future = [], []
            for t in range(x.shape[1]):
                lg, fut, state = self.step(x[:, t], state)
                logits.append(lg)
                future.append(fut)
            lg, fut = torch.stack(logits, dim=1), torch.stack(future, dim=1)  # (B, Tmax, C), (B, Tmax, Q, C)
            for b, i in enumerate(idx):
                out[i] = (lg[b, : lengths[b]], fut[b, : lengths[b]])
        return out

    @staticmethod
    def reference_to_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Reference parameter names -> this module's (drops ``module.`` and ``feature_extractor.``)."""
        renamed = {}
        for name, tensor in state_dict.items():
            if name.startswith("module."):
                name = name[len("module."):]
            if name.startswith("feature_extractor."):
                name = name[len("feature_extractor."):]
            renamed[name] = tensor
        return renamed

    @classmethod
    def reference_config(cls, state_dict: Mapping[str, Tensor], **overrides) -> dict:
        """Constructor arguments of a reference state dict: sizes from the tensors, then ``overrides``."""
        sd = cls.reference_to_state_dict(state_dict)
        kwargs = {
            "in_dim": sd["input_linear.0.weight"].shape[1],
            "hidden_dim": sd["enc_cell.weight_hh"].shape[1],
            "num_classes": sd["classifier.weight"].shape[0],
        }
        kwargs.update(overrides)
        return kwargs

    @classmethod
    def from_reference(cls, state_dict: Mapping[str, Tensor], **overrides) -> TRN:
        """Builds a TRN from a TRN.pytorch ``GeneralizedTRN`` state dict.

        ``in_dim``, ``hidden_dim`` and ``num_classes`` are read off the tensor shapes; the others
        (``window``, ``num_queries``, ``dropout``, ``ignore_index``) come from ``overrides`` or the defaults.

        Args:
            state_dict: the reference's parameter names (``feature_extractor.input_linear.0.*``,
                ``enc_cell.*``, ...), optionally with DataParallel's ``module.`` prefix.
            **overrides: constructor keyword arguments.

        Returns:
            The model with the reference weights loaded (strict).
        """
        renamed = cls.reference_to_state_dict(state_dict)
        kwargs = cls.reference_config(state_dict, **overrides)
        model = cls(**kwargs)
        model.load_state_dict(renamed, strict=True)
        return model
