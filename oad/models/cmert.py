"""CMeRT: Context-enhanced Memory-Refined Transformer for online action detection (Pang et al., CVPR 2025).

An LSTR-style network (:mod:`oad.models.lstr`) with three additions:

- **Context**: the short-term (work) window of ``W`` chunks is preceded by ``K`` earlier "context" chunks
  (0.5 s) that go through the work decoder with it; their outputs are discarded.
- **Anticipation**: ``A`` learned queries (2 s) follow the work tokens; they attend to every work token and to
  each other in both directions, while every work token attends causally (never to them).
- **Near-future generation and refinement**: ``G`` learned queries decode the compressed long memory alone into
  future tokens (interpolated to the ``F`` future targets, 12 s, for the future head); one refinement layer
  lets the short-term tokens attend to ``[compressed memory; themselves, causally; future tokens]``.

The long memory (256 s sampled every 4th chunk, no positional encoding) is compressed by 16 then 32 learned
queries, exactly as in LSTR; the work decoder attends to ``[compressed memory; short-term tokens]`` with the
mask ``[0 | causal]`` (``LONG_MEMORY_INCLUDE_WORK``, as TeSTra). Training weights the first pass 0.1, the
refined pass 1.0 (detection and anticipation rows) and the future head 0.5 (:class:`oad.losses.CMeRTCriterion`).

Faithful to the reference code (github.com/pangzhan27/CMeRT, ``models/cmert.py``, ``models/feature_head.py``
``BaseFeatureHead_mat``, THUMOS config ``cmert_long256_work4_kinetics_1x``): same layers and parameter names
(``from_reference`` loads its state dict with no rename; 94,685,206 parameters at the THUMOS size), the
work tokens' positional rows ``0 .. K+W-1`` and the anticipation queries' rows ``W .. W+A-1`` (the reference
offsets them by ``W``, not ``K + W``: the first ``K`` anticipation queries share the positions of the last
``K`` work tokens), the first ``A`` of the ``F`` final queries as anticipation queries (the other rows are
built and never used), nearest-neighbour interpolation of the future tokens, the reference test sampler of
the long memory (:meth:`oad.models.testra.TeSTra.long_memory_indices`, the same sampler: newest sample
``ws - 4``, left padding with chunk 0 whose last slot stays unmasked when chunk 0 is not on the grid; chunk
0 is never later than the scored chunk, so this is kept), and its training samples
(:class:`oad.data.memory.ContextWindowDataset`: TeSTra's windows and ``linspace`` long memories, with the
context chunks, anticipation targets and future targets of ``CMeRTBatchDataLayer``).

Whole-video scoring (``forward_video``) scores chunk ``t`` from the window ending at ``t``: work chunks
``ws = max(0, t - W + 1) .. t``, the ``K`` chunks before ``ws`` (clipped at chunk 0, as the reference pads
them) and the long memory of ``ws``; it uses chunks ``<= t`` only. For the detection scores this *is* the
reference batch inference (``main.py`` test branch): window 0 scores chunks ``0 .. W-1`` in one pass and
later windows only their last chunk, and every row of that rule is causal (a work token never attends to a
later one, the anticipation queries or anything generated from them, and the future tokens come from the
long memory of ``ws`` only), so no separate parity mode is needed; the tests check the equality and the
causality. Differences from the reference:

- Inputs are the concatenated chunk features (RGB then flow, ``in_dim``), split at ``visual_dim`` for the
  two-stream feature heads; the padding mask may be boolean (True for real tokens) or additive.
- The anticipation outputs (``future`` of ``forward_video``, ``A`` steps from chunk ``t + 1``) of a chunk
  ``t < W - 1`` come from the shorter window ``0 .. t``; the reference's window 0 computes them from all of
  chunks ``0 .. W-1`` (later chunks than ``t``) and its evaluation assigns that window's detection rows to
  them. From chunk ``W - 1`` on they are the reference window's anticipation rows.
- A video shorter than ``W`` is scored (its windows are shorter); the reference gives it no windows.
- Only what the reference's THUMOS configuration uses is built: two-stream input with linear feature heads,
  learned-query compression stages, ``FUT_MODULE`` with one entry, work positional encoding on, long
  positional encoding off, ``FC_NORM`` off, sample rates of 1 for the work, context and future.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oad.data.memory import window_tail
from oad.models.lstr import LSTR, Decoder, TwoStreamFeatureHead, causal_bias, padding_bias
from oad.models.testra import TeSTra


class CMeRT(LSTR):
    """Context-enhanced Memory-Refined Transformer.

    Args:
        in_dim: input feature size per chunk (RGB then flow, concatenated; 3072 on THUMOS).
        num_classes: classes including Background (and Ambiguous for THUMOS).
        visual_dim: width of the RGB part of the input (training reads it from the data); default
            ``2 * in_dim // 3`` (THUMOS two-stream:
            2048 RGB + 1024 flow).
        d_model: width (the feature heads' output size).
        num_heads: attention heads of every layer.
        ffn_dim: FFN hidden size.
        dropout: dropout of positional encodings, residual branches, FFNs and attention weights.
        long_memory: long-memory span in chunks (1024 = 256 s at 4 chunks/s).
        long_stride: long-memory sampling stride; ``N = long_memory // long_stride`` tokens.
        work_memory: short-term window ``W`` in chunks (16 = 4 s).
        context: context chunks ``K`` before the window (2 = 0.5 s); their outputs are discarded.
        anticipation: anticipation queries ``A`` (8 = 2 s); the first ``A`` rows of the final queries.
        future: future targets ``F`` of the future head (48 = 12 s); the final queries' rows.
        enc_queries: learned queries of each compression stage.
        enc_layers: decoder layers of each compression stage.
        dec_layers: layers of the work decoder.
        gen_queries: learned queries generating the future tokens from the compressed memory.
        gen_layers: layers of the generation decoder.
        refine_layers: refinement passes (one layer each; the reference's ``REFINE_TIMES``).
        max_len: rows of the positional table (reference 5000).
        window_bound: which training windows a video gives (read by the samples function only):
            ``"reference"``, the reference's ``ws + W + A < T - A``, which never supervises the last
            ``2A + 1`` chunks of a video as work chunks and takes nothing from a video of ``W + 2A`` chunks or
            fewer; ``"video"``, every window inside the video (``ws + W < T``, as LSTR and TeSTra), the
            anticipation rows past the end taking the last chunk's target as the future targets do.
    """

    online_step = "oad.online.cmert:CMeRTStep"
    samples = "oad.data.samples:cmert_memory_windows"
    long_pe = False
    include_work = True
    future_offset = 1  # anticipation step j issued at chunk t predicts chunk t + 1 + j
    # the reference test sampler (the same as TeSTra's): newest sample ws - 4, one unmasked chunk-0 slot
    long_memory_indices = TeSTra.long_memory_indices

    # registry (oad/models/registry.py): the tests' tiny instance (long memory 16 chunks = 4 tokens, work
    # memory 4, context 2, 3 anticipation queries), int8 bounds (a deeper stack than LSTR's: two decoder
    # layers, the generation decoder and the refinement add their quantization noise; 0.13 measured against
    # fp32 on the shared tiny case), benchmark rows
    tiny = dict(d_model=32, num_heads=4, ffn_dim=48, long_memory=16, work_memory=4, context=2, anticipation=3,
                future=6, enc_queries=(4, 4), gen_queries=4, gen_layers=1)
    tiny_init_norms = False
    int8_tolerance = {"fp32": 0.2, "offline": 0.2}
    paper_variants = {"CMeRT (long 1024)": {}}

    @staticmethod
    def recognises_reference(names: set[str]) -> bool:
        # MAT's checkpoints also have work_fusions, and fut_fusions beside them
        return ("feature_head_long.visual_linear.0.weight" in names and "work_fusions.0.norm.weight" in names
                and not any(n.startswith("fut_fusions.") for n in names))

    def __init__(
        self,
        *,
        in_dim: int,
        num_classes: int = 22,
        visual_dim: int | None = None,
        d_model: int = 1024,
        num_heads: int = 8,
        ffn_dim: int = 1024,
        dropout: float = 0.0,
        long_memory: int = 1024,
        long_stride: int = 4,
        work_memory: int = 16,
        context: int = 2,
        anticipation: int = 8,
        future: int = 48,
        enc_queries: tuple[int, ...] = (16, 32),
        enc_layers: tuple[int, ...] = (1, 2),
        dec_layers: int = 2,
        gen_queries: int = 32,
        gen_layers: int = 2,
        refine_layers: int = 1,
        max_len: int = 5000,
        window_bound: str = "reference",
    ):
        super().__init__(in_dim=in_dim, num_classes=num_classes, d_model=d_model, num_heads=num_heads,
                         ffn_dim=ffn_dim, dropout=dropout, long_memory=long_memory, long_stride=long_stride,
                         work_memory=work_memory, enc_queries=enc_queries, enc_layers=enc_layers,
                         dec_layers=dec_layers, max_len=max_len)
        visual_dim = 2 * in_dim // 3 if visual_dim is None else visual_dim
        if not 0 < visual_dim < in_dim:
            raise ValueError(f"visual_dim {visual_dim} must split in_dim {in_dim} into two non-empty streams")
        if not 0 < anticipation <= future:
            raise ValueError(f"need 0 < anticipation <= future (the anticipation queries are the first final "
                             f"queries), got {anticipation}, {future}")
        if context < 0 or refine_layers < 1:
            raise ValueError(f"need context >= 0 and refine_layers >= 1, got {context}, {refine_layers}")
        if context + work_memory > max_len or work_memory + anticipation > max_len:
            raise ValueError(f"max_len {max_len} is too small for the work and anticipation positions")
        window_tail(window_bound, anticipation)  # a wrong value fails here, before any training
        self.visual_dim, self.context, self.num_queries, self.future = visual_dim, context, anticipation, future
        self.feature_head_long = TwoStreamFeatureHead(visual_dim, in_dim - visual_dim, d_model)
        self.feature_head_work = TwoStreamFeatureHead(visual_dim, in_dim - visual_dim, d_model)
        self.gen_query = nn.Embedding(gen_queries, d_model)
        self.gen_layer = Decoder(d_model, num_heads, ffn_dim, dropout, gen_layers)
        self.final_query = nn.Embedding(future, d_model)
        self.work_fusions = nn.ModuleList(
            Decoder(d_model, num_heads, ffn_dim, dropout, 1) for _ in range(refine_layers)
        )

    # -- the network -------------------------------------------------------------------------------------
    def anticipation_tokens(self, batch: int) -> Tensor:
        """``(batch, A, d)`` anticipation queries with their positional rows ``W .. W+A-1``."""
        q = self.final_query.weight[:self.num_queries].unsqueeze(0).expand(batch, -1, -1)  # (A, d) -> (B, A, d)
        return self.pos_encoding(q, self.work_memory)

    def window_bias(self, n_work: int, *, device=None, dtype=torch.float32) -> Tensor:
        """``(n + A, n + A)`` self-attention mask of ``n`` work tokens then the anticipation queries: causal,
        with the anticipation block bidirectional."""
        A = self.num_queries
        bias = causal_bias(n_work + A, device=device, dtype=dtype)
        bias[n_work:, n_work:] = 0.0
        return bias

    def generation_constant(self) -> Tensor:
        """``(G, d)``: the generation queries after the generation decoder's first self-attention block,
        which depends on nothing else (a constant of the inference paths, as LSTR's ``stage_tgt``)."""
        return self.gen_layer.layers[0].self_block(self.gen_query.weight.unsqueeze(0))[0]

    def generate(self, memory: Tensor, gen_tgt: Tensor | None = None) -> Tensor:
        """Future tokens of the compressed memory alone: ``(B, M, d)`` -> ``(B, G, d)``.

        ``gen_tgt``: :meth:`generation_constant`, to skip recomputing it (eval).
        """
        B = memory.shape[0]
        if gen_tgt is None:
            return self.gen_layer(self.gen_query.weight.unsqueeze(0).expand(B, -1, -1), memory)  # (G, d) -> (B, G, d)
        x = self.gen_layer.layers[0].cross_block(gen_tgt.unsqueeze(0).expand(B, -1, -1), memory)
        for layer in self.gen_layer.layers[1:]:
            x = layer(x, memory)
        return self.gen_layer.norm(x)

    def decode_window(self, h_work: Tensor, memory: Tensor, gen_tgt: Tensor | None = None,
                      last_rows: int | None = None) -> tuple[list[Tensor], Tensor]:
        """Work decoder and refinement of windows.

        Args:
            h_work: ``(B, K + n, d)`` work-head outputs of the context and work chunks, oldest first.
            memory: ``(B, M, d)`` compressed long memory.
            gen_tgt: :meth:`generation_constant` (eval), or None.
            last_rows: compute the last refinement pass for the last ``last_rows`` rows only (its queries;
                the keys are every row, so those rows are exact).

        Returns:
            The outputs of each pass over the work and anticipation rows, ``[(B, n + A, d)] * (1 + refine)``
            (first pass, then each refinement; the last one ``(B, last_rows, d)`` with ``last_rows``), and
            the future tokens ``(B, G, d)``.
        """
        B, Kn = h_work.shape[:2]
        K, M = self.context, memory.shape[1]
        tokens = torch.cat((self.pos_encoding(h_work, 0), self.anticipation_tokens(B)), dim=1)  # (B, K+n+A, d)
        bias = self.window_bias(Kn, device=tokens.device, dtype=tokens.dtype)
        out = self.dec_modules(tokens, torch.cat((memory, tokens), dim=1), bias, F.pad(bias, (M, 0)))
        out, bias = out[:, K:], bias[K:, K:]  # the context rows are discarded
        future = self.generate(memory, gen_tgt)
        refine_bias = F.pad(bias, (M, future.shape[1]))  # [0 | causal | 0]
        passes = [out]
        for i, fusion in enumerate(self.work_fusions):
            total = torch.cat((memory, out, future), dim=1)
            if last_rows is not None and i == len(self.work_fusions) - 1:
                layer, q = fusion.layers[0], out[:, -last_rows:]  # one layer per refinement
                q = layer.norm1(q + layer.dropout1(layer.self_attn(q, out, out, bias[-last_rows:])))
                out = fusion.norm(layer.cross_block(q, total, refine_bias[-last_rows:]))
            else:
                out = fusion(out, total, bias, refine_bias)
            passes.append(out)
        return passes, future

    def future_logits(self, future: Tensor) -> Tensor:
        """``(B, G, d)`` future tokens -> ``(B, F, C)`` (nearest interpolation to ``F``, then the classifier)."""
        return self.classifier(F.interpolate(future.transpose(1, 2), size=self.future).transpose(1, 2))

    def forward(self, long_x: Tensor, work_x: Tensor, long_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Reference forward: every pass's logits of the work and anticipation rows, and the future head.

        Args:
            long_x: ``(B, N, in_dim)`` long-memory chunks, oldest first (left padding allowed).
            work_x: ``(B, K + W', in_dim)`` the context chunks then the work chunks, ``W' <= W``.
            long_mask: ``(B, N)`` bool, True for real long-memory tokens, or additive (0 / -inf) as in
                the reference; None when every token is real.

        Returns:
            ``passes (B, P, W' + A, C)``: ``P = 1 + refine_layers`` passes (first, refined), rows the work
            chunks then the anticipation steps; ``future (B, F, C)``.
        """
        if long_x.shape[1] != self.num_long:
            raise ValueError(f"long memory of {long_x.shape[1]} tokens, expected {self.num_long}")
        n = work_x.shape[1] - self.context
        if not 0 < n <= self.work_memory:
            raise ValueError(f"{work_x.shape[1]} work chunks: expected {self.context} context chunks and "
                             f"1 .. {self.work_memory} work chunks")
        long_tokens = self.feature_head_long(long_x)
        memory = self.compress(long_tokens, padding_bias(long_mask, long_tokens.dtype))
        passes, future = self.decode_window(self.feature_head_work(work_x), memory)
        return torch.stack([self.classifier(p) for p in passes], dim=1), self.future_logits(future)

    def training_logits(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(B, P, W + A, C)`` logits of every pass and ``(B, F, C)`` future logits
        (:class:`oad.losses.CMeRTCriterion` compares them with ``target (B, W + A, C)`` and
        ``future_target (B, F, C)``)."""
        return self(batch["long_features"], batch["features"], batch["long_mask"])

    # -- whole videos ------------------------------------------------------------------------------------
    def window_chunks(self, t: Tensor) -> Tensor:
        """Chunk indices ``(len(t), K + W)`` of the context and work chunks of the windows ending at ``t``
        (``t >= W - 1``); context chunks before chunk 0 are chunk 0, as the reference clips them."""
        offsets = torch.arange(-self.context - self.work_memory + 1, 1, device=t.device)
        return (t[:, None] + offsets).clamp(min=0)

    def score_windows(self, h_work: Tensor, memory: Tensor, gen_tgt: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Refined logits of the last work chunk and of the anticipation rows of windows (the last
        refinement is computed for those ``1 + A`` rows only).

        Args:
            h_work: ``(B, K + n, d)`` work-head outputs of each window's context and work chunks.
            memory: ``(B, M, d)`` their compressed long memories.
            gen_tgt: :meth:`generation_constant` (eval), or None.

        Returns:
            ``logits (B, C)`` of the last work chunk and ``future (B, A, C)``.
        """
        passes, _ = self.decode_window(h_work, memory, gen_tgt, last_rows=self.num_queries + 1)
        logits = self.classifier(passes[-1])  # (B, 1 + A, C)
        return logits[:, 0], logits[:, 1:]

    @torch.no_grad()
    def forward_video(self, features: Tensor, max_batch: int | None = None) -> tuple[Tensor, Tensor]:
        """Whole-video scores, chunk ``t`` from chunks ``<= t`` (eval mode, no gradients).

        Chunk ``t`` is the last work row of the window ``max(0, t - W + 1) .. t`` (module docstring): the
        reference batch inference's detection scores. The feature heads and the first compression stage's
        key/value projections run once per chunk, the learned queries' first self-attention blocks once;
        windows are batched.

        Args:
            features: ``(T, in_dim)`` chunk features of one video.
            max_batch: windows per batch (default: about 16M gathered floats per batch).

        Returns:
            ``logits (T, C)`` and ``future (T, A, C)`` (anticipation step ``j`` of chunk ``t``: chunk ``t+1+j``).
        """
        T = features.shape[0]
        C, W, A, N, d = self.num_classes, self.work_memory, self.num_queries, self.num_long, self.d_model
        logits, future = features.new_zeros(T, C), features.new_zeros(T, A, C)
        if T == 0:
            return logits, future
        consts, gen_tgt = self.stage1_constants(), self.generation_constant()
        h_work = self.feature_head_work(features)  # (T, d), once per chunk
        scores, values = self.long_parts(self.feature_head_long(features), consts)  # (T, H, Q1), (T, d)

        def memory_of(ws: Tensor) -> Tensor:
            idx, valid = self.long_memory_indices(ws)  # (B, N)
            return self.compress_from_attention(self.stage1_attend(scores[idx], values[idx], valid, consts), consts)

        first = min(W - 1, T)  # chunks 0 .. W-2: the shorter windows 0 .. t of window 0
        if first:
            memory = memory_of(torch.zeros(1, dtype=torch.long, device=features.device))
            ctx = h_work[:1].expand(self.context, -1)
            for t in range(first):
                h = torch.cat((ctx, h_work[:t + 1]))[None]  # (1, K + t + 1, d)
                lg, fut = self.score_windows(h, memory, gen_tgt)
                logits[t], future[t] = lg[0], fut[0]
        if T >= W:
            if max_batch is None:
                max_batch = max(1, (1 << 24) // (N * d))
            for start in range(W - 1, T, max_batch):
                t = torch.arange(start, min(start + max_batch, T), device=features.device)
                lg, fut = self.score_windows(h_work[self.window_chunks(t)], memory_of(t - W + 1), gen_tgt)
                logits[t], future[t] = lg, fut
        return logits, future

    # -- reference checkpoints ---------------------------------------------------------------------------
    @classmethod
    def reference_config(cls, state_dict: dict[str, Tensor], config_file: str | Path | None = None,
                         **overrides) -> dict:
        """Constructor arguments of a reference state dict and (optionally) its YAML config.

        Widths and layer counts come from the tensors. Heads, dropout and the memory lengths come from
        ``config_file`` (the reference's own schema: ``MODEL.LSTR.*`` in seconds, ``DATA.FPS``), else the
        THUMOS configuration (8 heads, 256 s every 4th chunk, 4 s work, 0.5 s context, 2 s anticipation,
        12 s future at 4 chunks/s); ``overrides`` win over both.
        """
        sd = cls.reference_to_state_dict(state_dict)

        def count(prefix: str, depth: int) -> int:
            return len({k.split(".")[depth] for k in sd if k.startswith(prefix)})

        n_stages = count("enc_queries.", 1)
        visual = sd["feature_head_long.visual_linear.0.weight"]
        kwargs = {
            "visual_dim": visual.shape[1],
            "in_dim": visual.shape[1] + sd["feature_head_long.motion_linear.0.weight"].shape[1],
            "num_classes": sd["classifier.weight"].shape[0],
            "d_model": visual.shape[0],
            "ffn_dim": sd["dec_modules.layers.0.linear1.weight"].shape[0],
            "enc_queries": tuple(sd[f"enc_queries.{i}.weight"].shape[0] for i in range(n_stages)),
            "enc_layers": tuple(count(f"enc_modules.{i}.layers.", 3) for i in range(n_stages)),
            "dec_layers": count("dec_modules.layers.", 2),
            "gen_queries": sd["gen_query.weight"].shape[0],
            "gen_layers": count("gen_layer.layers.", 2),
            "refine_layers": count("work_fusions.", 1),
            "future": sd["final_query.weight"].shape[0],
        }
        if "pos_encoding.pe" in sd:
            kwargs["max_len"] = sd["pos_encoding.pe"].shape[0]
        if config_file is not None:
            from_file = reference_yaml_config(config_file)
            classes = from_file.pop("num_classes", kwargs["num_classes"])
            if classes != kwargs["num_classes"]:
                raise ValueError(f"{config_file}: DATA.NUM_CLASSES {classes}, but the classifier has "
                                 f"{kwargs['num_classes']} outputs")
            kwargs.update(from_file)
        kwargs.update(overrides)
        return kwargs

    @classmethod
    def from_reference(cls, state_dict: dict[str, Tensor], config_file: str | Path | None = None, **overrides):
        """Build from a reference checkpoint's state dict (and its YAML config) and load the weights (strict).

        Args:
            state_dict: ``torch.load(path)['model_state_dict']`` of the reference code (or the whole
                checkpoint; ``module.`` prefix allowed).
            config_file: the reference's YAML config (e.g. ``configs/THUMOS/cmert_long256_work4_kinetics_1x.yaml``).
            **overrides: constructor arguments that win over the inferred ones.
        """
        sd = cls.reference_to_state_dict(state_dict)
        model = cls(**cls.reference_config(sd, config_file, **overrides))
        model.load_state_dict(sd, strict=True)
        return model


def reference_yaml_config(path: str | Path) -> dict:
    """The constructor arguments a reference YAML config sets (classes, heads, dropout, lengths in chunks).

    Reads ``DATA.FPS`` (default 4), ``DATA.NUM_CLASSES`` (where present) and ``MODEL.LSTR``; lengths are ``seconds x FPS`` divided by their sample
    rates, as the reference's ``assert_and_infer_cfg``. Settings this implementation does not build raise.
    """
    import yaml

    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    data = cfg.get("DATA") or {}
    fps = data.get("FPS") or 4
    lstr = (cfg.get("MODEL") or {}).get("LSTR") or {}
    for key, want in (("ACTIVATION", "relu"), ("LONG_MEMORY_USE_PE", False), ("WORK_MEMORY_USE_PE", True),
                      ("LONG_MEMORY_INCLUDE_WORK", True), ("FC_NORM", False), ("WORK_MEMORY_SAMPLE_RATE", 1),
                      ("CONTEXT_MEMORY_SAMPLE_RATE", 1), ("FUTURE_SAMPLE_RATE", 1),
                      ("ANTICIPATION_SAMPLE_RATE", 1)):
        if lstr.get(key, want) != want:
            raise NotImplementedError(f"{path}: MODEL.LSTR.{key} = {lstr[key]!r} is not supported (only {want!r})")
    out = {"num_classes": int(data["NUM_CLASSES"])} if data.get("NUM_CLASSES") else {}
    if "NUM_HEADS" in lstr:
        out["num_heads"] = int(lstr["NUM_HEADS"])
    if "DROPOUT" in lstr:
        out["dropout"] = float(lstr["DROPOUT"])
    if "LONG_MEMORY_SECONDS" in lstr:
        out["long_memory"] = int(round(lstr["LONG_MEMORY_SECONDS"] * fps))
    if "LONG_MEMORY_SAMPLE_RATE" in lstr:
        out["long_stride"] = int(lstr["LONG_MEMORY_SAMPLE_RATE"])
    if "WORK_MEMORY_SECONDS" in lstr:
        out["work_memory"] = int(round(lstr["WORK_MEMORY_SECONDS"] * fps))
    if "CONTEXT_SECONDS" in lstr:
        out["context"] = int(lstr["CONTEXT_SECONDS"] * fps)  # int(), as the reference
    if "ANTICIPATION_SECONDS" in lstr:
        out["anticipation"] = int(round(lstr["ANTICIPATION_SECONDS"] * fps))
    if "FUTURE_SECONDS" in lstr:
        out["future"] = int(round(lstr["FUTURE_SECONDS"] * fps))
    return out


__all__ = ["CMeRT", "reference_yaml_config"]
