"""Compact front-end encoders of the live model, one per modality.

Each front-end turns one modality's featurised window (see `engines.features`) into a short,
time-ordered sequence of tokens for its MoMKE expert, and has a small pooled head so it can be
trained alone on its own dataset first (STYLE.md section 8):

  forward_features(x, mask) -> tokens (B, T, dim), token_mask (B, T)
  forward_head(tokens, token_mask) -> logits (B, n_classes)   (masked mean pooling + linear)

The audio and face front-ends are small on purpose: a car computer runs them every window, and
they are trained from scratch on a few hundred clips (EmoDB) or faces (CK+). Text has two:
a compact encoder trained from scratch, and all-MiniLM-L6-v2 fine-tuned (MiniLMTextFrontend),
which MELD's ten thousand lines cannot teach from scratch (README "Live model": the trade-off).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engines.features import MAX_FACES, MAX_TOKENS, N_AUDIO_FRAMES, N_MELS


@dataclass(frozen=True, kw_only=True)
class FrontendConfig:
    """Shared shape of all front-ends; `width` is the channel count of the first block."""

    n_classes: int = 7
    width: int = 32
    dim: int = 64  # token dim handed to MoMKE
    dropout: float = 0.2
    text_vocab: int = 0  # number of token ids (the tokenizer's n_ids); text only
    text_embed: int = 64
    # "compact" (TextFrontend, engines.features.Tokenizer) or "minilm" (MiniLMTextFrontend,
    # engines.wordpiece.WordPieceTokenizer)
    text_encoder: str = "compact"
    audio_norm: str = "window"  # "window": one mean/std per window; "band": per mel band
    audio_stats: bool = True  # add per-band mean/std of the window to every audio token
    # Face branches: "cnn" (learned), "hog" (fixed histogram-of-oriented-gradients features +
    # linear map, in-graph), "cnn+hog" (their sum per crop token).
    video_branches: str = "cnn"
    hog_cells: tuple[int, ...] = (8,)  # HOG cell sizes in pixels, concatenated (HOG.cells)
    # Independently trained copies of this front-end (FrontendEnsemble); its tokens are
    # members * dim wide.
    members: int = 1

    def __post_init__(self) -> None:
        if self.width < 1 or self.dim < 1 or not 0 <= self.dropout < 1 or self.members < 1:
            raise ValueError(f"invalid front-end config {self}")
        if self.video_branches not in ("cnn", "hog", "cnn+hog"):
            raise ValueError("video_branches must be 'cnn', 'hog' or 'cnn+hog'")
        if self.text_encoder not in ("compact", "minilm"):
            raise ValueError("text_encoder must be 'compact' or 'minilm'")


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """(B, T, D), (B, T) bool -> (B, D) mean over real tokens (0 where a row has none)."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)  # (B, T, 1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class _PooledHead(nn.Module):
    """Statistics pooling (mean and spread over real tokens) + linear: the stand-alone head."""

    def __init__(self, cfg: FrontendConfig) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(2 * cfg.dim, cfg.n_classes))

    def forward_head(self, tokens: Tensor, token_mask: Tensor) -> Tensor:
        mean = masked_mean(tokens, token_mask)  # (B, D)
        spread = masked_mean((tokens - mean.unsqueeze(1)) ** 2, token_mask).add(1e-5).sqrt()
        return self.head(torch.cat([mean, spread], dim=-1))


class AudioFrontend(_PooledHead):
    """log-mel (B, N_MELS, 198 frames) -> (B, 25, dim): mel bands as channels, 1-D conv in time.

    Each window is standardised by its own mean/std first, so microphone gain shifts less; the
    overall level is kept as one extra channel because loudness carries arousal.
    """

    n_frames = N_AUDIO_FRAMES

    def __init__(self, cfg: FrontendConfig) -> None:
        super().__init__(cfg)
        w, self.norm = cfg.width, cfg.audio_norm

        def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv1d(c_in, c_out, 5, stride=stride, padding=2),
                                 nn.BatchNorm1d(c_out), nn.GELU())

        self.encoder = nn.Sequential(
            block(N_MELS + 1, w, 1), block(w, 2 * w, 2), block(2 * w, 2 * w, 2),
            block(2 * w, 2 * w, 2), nn.Dropout(cfg.dropout), nn.Conv1d(2 * w, cfg.dim, 1),
        )
        # Utterance-level spectral statistics (what an MFCC-statistics classifier sees), given
        # to every token: the conv tokens then only have to model the dynamics on top.
        self.stats = (nn.Sequential(nn.Linear(2 * (N_MELS + 1), cfg.dim), nn.GELU(),
                                    nn.Dropout(cfg.dropout), nn.Linear(cfg.dim, cfg.dim))
                      if cfg.audio_stats else None)

    def forward_features(self, logmel: Tensor) -> tuple[Tensor, Tensor]:
        # One scalar mean/std per window (not per band): removes microphone gain while keeping
        # the spectral envelope (timbre, formants), which carries emotion.
        dims = (2,) if self.norm == "band" else (1, 2)
        mean = logmel.mean(dim=dims, keepdim=True)  # (B, 1 or N_MELS, 1)
        std = logmel.std(dim=dims, keepdim=True) + 1e-3
        level = ((mean.mean(1, keepdim=True) + 8.0) / 4.0).expand(-1, 1, logmel.shape[2])
        x = torch.cat([(logmel - mean) / std, level], dim=1)  # (B, N_MELS + 1, T)
        tokens = self.encoder(x).transpose(1, 2)  # (B, T', dim), T' = ceil(T / 8) = 25
        if self.stats is not None:
            summary = torch.cat([x.mean(dim=2), x.std(dim=2)], dim=1)  # (B, 2 * (N_MELS + 1))
            tokens = tokens + self.stats(summary).unsqueeze(1)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)


class HOG(nn.Module):
    """Histogram of oriented gradients as fixed tensor ops (exports to ONNX, no atan2).

    (N, 1, 48, 48) -> (N, n_out): 9 unsigned orientation bins, square cells of each size in
    `cells`, 2x2-cell blocks with stride one cell, L2-Hys block normalisation; at cell 8 this is
    the layout of cv2.HOGDescriptor((48, 48), (16, 16), (8, 8), (8, 8), 9), 900 values. Several
    cell sizes share the gradients and the orientation binning and concatenate their blocks
    (cell 4 adds 11x11 blocks, 4356 values: finer detail around the eyes and mouth).
    Orientation binning is soft: bin k gets the gradient magnitude times
    relu(cos(2 (theta - phi_k)))^4, computed from the double-angle identities
    cos 2theta = (gx^2 - gy^2) / |g|^2 and sin 2theta = 2 gx gy / |g|^2.
    """

    n_bins, side = 9, 48
    kernels: Tensor
    cos2phi: Tensor
    sin2phi: Tensor

    def __init__(self, cells: tuple[int, ...] = (8,)) -> None:
        super().__init__()
        if not cells or any(c < 2 or self.side % c for c in cells):
            raise ValueError(f"HOG cell sizes must divide {self.side}, got {cells}")
        self.cells = tuple(cells)
        self.n_out = sum(4 * self.n_bins * (self.side // c - 1) ** 2 for c in self.cells)
        k = torch.tensor([[0.0, 0.0, 0.0], [-1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
        self.register_buffer("kernels", torch.stack([k, k.t()])[:, None])  # (2, 1, 3, 3)
        phi = torch.arange(self.n_bins, dtype=torch.float32) * torch.pi / self.n_bins
        self.register_buffer("cos2phi", torch.cos(2 * phi).view(1, -1, 1, 1))
        self.register_buffer("sin2phi", torch.sin(2 * phi).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        g = nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"),
                                 self.kernels)  # (N, 2, H, W): gx, gy
        gx, gy = g[:, :1], g[:, 1:]
        # clamp, not "+ eps": the ONNX exporter's optimiser drops an added 1e-8 as a no-op,
        # which turns flat regions (and empty face slots) into 0/0 = NaN in onnxruntime.
        mag2 = (gx * gx + gy * gy).clamp(min=1e-6)
        mag = mag2.sqrt()
        cos2, sin2 = (gx * gx - gy * gy) / mag2, 2 * gx * gy / mag2  # (N, 1, H, W)
        align = torch.relu(cos2 * self.cos2phi + sin2 * self.sin2phi)  # (N, 9, H, W)
        oriented = mag * align ** 4  # (N, 9, 48, 48)
        return torch.cat([self._blocks(oriented, c) for c in self.cells], dim=1)  # (N, n_out)

    @staticmethod
    def _blocks(oriented: Tensor, cell: int) -> Tensor:
        cells = nn.functional.avg_pool2d(oriented, cell)  # (N, 9, n, n), n = 48 / cell
        blocks = torch.cat([cells[:, :, :-1, :-1], cells[:, :, 1:, :-1],
                            cells[:, :, :-1, 1:], cells[:, :, 1:, 1:]], dim=1)  # (N, 36, n-1, n-1)
        blocks = blocks / blocks.pow(2).sum(1, keepdim=True).clamp(min=1e-4).sqrt()
        blocks = blocks.clamp(max=0.2)
        blocks = blocks / blocks.pow(2).sum(1, keepdim=True).clamp(min=1e-4).sqrt()
        return blocks.flatten(1)  # (N, 36 (n-1)^2): 900 at cell 8


class VideoFrontend(_PooledHead):
    """Face crops (B, MAX_FACES, 48, 48) + mask -> (B, MAX_FACES, dim): one token per crop."""

    def __init__(self, cfg: FrontendConfig) -> None:
        super().__init__(cfg)
        w, self.dim = cfg.width, cfg.dim

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                                 nn.GELU(), nn.Conv2d(c_out, c_out, 3, padding=1),
                                 nn.BatchNorm2d(c_out), nn.GELU(), nn.MaxPool2d(2))

        # 48 -> 24 -> 12 -> 6 -> 3, then global average pooling.
        self.cnn = (nn.Sequential(block(1, w), block(w, 2 * w), block(2 * w, 4 * w),
                                  block(4 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Dropout(cfg.dropout), nn.Linear(4 * w, cfg.dim))
                    if "cnn" in cfg.video_branches else None)
        self.hog: nn.Sequential | None = None
        if "hog" in cfg.video_branches:
            hog = HOG(tuple(cfg.hog_cells))
            self.hog = nn.Sequential(hog, nn.Dropout(cfg.dropout), nn.Linear(hog.n_out, cfg.dim))

    def forward_features(self, frames: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        b, t, h, w = frames.shape
        x = frames.reshape(b * t, 1, h, w)  # (B*T, 1, 48, 48): one crop per row
        tokens = self.cnn(x) if self.cnn is not None else None  # (B*T, dim)
        if self.hog is not None:
            tokens = self.hog(x) if tokens is None else tokens + self.hog(x)
        assert tokens is not None
        return tokens.reshape(b, t, self.dim), mask  # (B, T, dim)


class TextFrontend(_PooledHead):
    """Token ids (B, MAX_TOKENS) + mask -> (B, MAX_TOKENS, dim): embeddings + causal conv.

    A fastText-like bag of word and hashed-bigram embeddings is the core of it; one causal
    convolution over the sequence adds short-range order (negation) without looking ahead.
    """

    def __init__(self, cfg: FrontendConfig) -> None:
        super().__init__(cfg)
        if cfg.text_vocab < 3:
            raise ValueError("TextFrontend needs text_vocab (Tokenizer.n_ids)")
        self.embed = nn.Embedding(cfg.text_vocab, cfg.text_embed, padding_idx=0)
        self.kernel = 3
        self.conv = nn.Conv1d(cfg.text_embed, cfg.text_embed, self.kernel)
        self.proj = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.text_embed, cfg.dim),
                                  nn.GELU())

    def forward_features(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        emb = self.embed(ids) * mask.unsqueeze(-1).to(torch.float32)  # (B, T, E)
        x = emb.transpose(1, 2)  # (B, E, T)
        x = nn.functional.pad(x, (self.kernel - 1, 0))  # left pad only: causal
        tokens = emb + torch.relu(self.conv(x)).transpose(1, 2)  # (B, T, E)
        return self.proj(tokens), mask


class MiniLMTextFrontend(_PooledHead):
    """Word-piece ids (B, L) + mask -> (B, L, dim): all-MiniLM-L6-v2 (engines.minilm) + a linear
    map per token.

    A window's text is one segment (token types all 0, made in-graph). Attention is
    bidirectional *within* the window's text: it holds finished transcript lines, so no token
    sees anything later than the window's end. The map is linear, so the head's mean of the
    tokens is a linear map of the mean-pooled sentence embedding all-MiniLM-L6-v2 was trained to
    produce. Training starts from the pinned pretrained weights (`load_pretrained`, called by
    engines.live_fit); a saved model carries its own.
    """

    def __init__(self, cfg: FrontendConfig) -> None:
        super().__init__(cfg)
        from engines.minilm import MiniLMConfig, MiniLMEncoder

        enc_cfg = MiniLMConfig(dropout=0.1)
        if cfg.text_vocab != enc_cfg.vocab_size:
            raise ValueError(f"MiniLMTextFrontend needs the WordPiece vocabulary "
                             f"({enc_cfg.vocab_size} ids), got text_vocab={cfg.text_vocab}")
        self.encoder = MiniLMEncoder(enc_cfg)
        self.proj = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(enc_cfg.hidden, cfg.dim))

    def load_pretrained(self) -> None:
        from engines.minilm import pretrained_dir, read_safetensors

        self.encoder.load_bert_weights(read_safetensors(pretrained_dir() / "model.safetensors"))

    def forward_features(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.encoder(ids, torch.zeros_like(ids), mask)  # (B, L, 384)
        # Padding positions are zeroed: their values would depend on the padded length.
        return self.proj(hidden) * mask.unsqueeze(-1).to(hidden.dtype), mask  # (B, L, dim)


FRONTENDS: dict[str, type[_PooledHead]] = {
    "audio": AudioFrontend,
    "video": VideoFrontend,
    "text": TextFrontend,
}

# Raw model-input shapes per modality (batch first), used by export and the backends.
INPUT_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "audio": {"audio_logmel": (N_MELS, N_AUDIO_FRAMES)},
    "video": {"video_frames": (MAX_FACES, 48, 48), "video_mask": (MAX_FACES,)},
    "text": {"text_ids": (MAX_TOKENS,), "text_mask": (MAX_TOKENS,)},
}


class FrontendEnsemble(nn.Module):
    """Copies of one front-end trained apart (different seeds), run side by side.

    Why: on a few hundred clips from seven speakers, one training run's test UA moves by +-0.1
    per speaker with the seed alone; the mean of independently trained copies keeps what they
    agree on (EmoDB leave-one-speaker-out, README "Live model"). Tokens are concatenated along
    the feature axis, (B, T, members * dim), for MoMKE's expert to read; the stand-alone head is
    the mean of the members' heads (mean logits = mean log-probabilities up to a constant).
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward_features(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        outs = [fe.forward_features(*inputs) for fe in self.members]  # type: ignore[operator]
        return torch.cat([t for t, _ in outs], dim=-1), outs[0][1]  # (B, T, K * dim), (B, T)

    def forward_head(self, tokens: Tensor, token_mask: Tensor) -> Tensor:
        parts = tokens.chunk(len(self.members), dim=-1)  # K x (B, T, dim)
        return torch.stack([fe.forward_head(t, token_mask)  # type: ignore[operator]
                            for fe, t in zip(self.members, parts, strict=True)]).mean(0)


def build_frontend(modality: str, cfg: FrontendConfig) -> nn.Module:
    """One front-end, or a FrontendEnsemble of `cfg.members` (each with members=1)."""
    kind = (MiniLMTextFrontend if modality == "text" and cfg.text_encoder == "minilm"
            else FRONTENDS[modality])
    if cfg.members == 1:
        return kind(cfg)
    one = dataclasses.replace(cfg, members=1)
    return FrontendEnsemble([kind(one) for _ in range(cfg.members)])


def run_frontend(module: nn.Module, modality: str, inputs: dict[str, Tensor]
                 ) -> tuple[Tensor, Tensor]:
    """Call a front-end's forward_features with its named inputs."""
    if modality == "audio":
        return module.forward_features(inputs["audio_logmel"])  # type: ignore[operator]
    if modality == "video":
        return module.forward_features(inputs["video_frames"], inputs["video_mask"])  # type: ignore[operator]
    return module.forward_features(inputs["text_ids"], inputs["text_mask"])  # type: ignore[operator]
