"""The tiny fixture pairs must match the release layout exactly; otherwise every other test is vacuous.

The key check is that an untrained AR (identity value head, final norm replaced with Identity)
reproduces the base activation hidden_states[K+1]: it catches layer off-by-ones, a kept final
norm, wrong key names and a mis-wrapped Gemma-3 text model at once.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from nlalab.errors import NLALabError
from nlalab.pairs.build import (
    CALIBRATION_PROMPTS,
    build_untrained_pair,
    calibration_norms,
    load_base,
    round_up_sig,
)
from nlalab.pairs.arch import inner_model as text_backbone
from nlalab.pairs.markers import av_prompt_ids, choose_marker, locate_marker
from nlalab.pairs.sidecar import DEFAULT_AR_TEMPLATE, read_sidecar
from nlalab.testing import DEFECTS, make_defect, torch_threads
from nlalab.testing.models import TOKENIZER_FAMILY
from nlalab.testing.tokenizers import LLAMA_DATE_HEADER, MARKERS, QWEN_DEFAULT_SYSTEM, make_tokenizer

EXPLANATION = "A formal news report about an election; the final token opens a quotation."


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny forwards are ~100x slower with 2 OpenMP threads on a shared 2-core box.
    with torch_threads(1):
        yield


def _tokenizer(d: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(d)


def _config(d: Path) -> dict:
    return json.loads((d / "config.json").read_text())


def _weight_keys(d: Path) -> list[str]:
    keys: list[str] = []
    for f in sorted(d.glob("*.safetensors")):
        if f.name == "value_head.safetensors":
            continue
        with safe_open(str(f), "pt") as s:
            keys += list(s.keys())
    return keys


def _layer_indices(keys) -> set[int]:
    return {int(k.split(".")[2]) for k in keys if k.startswith("model.layers.")}


def _n_layers(cfg: dict) -> int:
    return cfg.get("text_config", cfg)["num_hidden_layers"]


def _hidden(cfg: dict) -> int:
    return cfg.get("text_config", cfg)["hidden_size"]


def _tree(d: Path) -> dict[str, str]:
    files = sorted(p for p in d.rglob("*") if p.is_file())
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _pair_tree(pair) -> dict[str, str]:
    return {f"av/{k}": v for k, v in _tree(pair.av).items()} | {f"ar/{k}": v for k, v in _tree(pair.ar).items()}


def _ar_prompt_ids(tok) -> torch.Tensor:
    text = DEFAULT_AR_TEMPLATE.format(explanation=EXPLANATION)
    return tok(text, add_special_tokens=True, return_tensors="pt").input_ids


def _ar_values(ar_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    """kitft NLACritic: truncated backbone, norm -> Identity, value head on the last hidden state."""
    from transformers import AutoModelForCausalLM

    ar = AutoModelForCausalLM.from_pretrained(ar_dir, dtype=torch.float32).eval()
    ar.model.norm = torch.nn.Identity()
    ar.lm_head = torch.nn.Identity()
    d = ar.config.hidden_size
    head = torch.nn.Linear(d, d, bias=False)
    with safe_open(str(ar_dir / "value_head.safetensors"), "pt") as s:
        head.load_state_dict({"weight": s.get_tensor("weight").float()})
    with torch.no_grad():
        h = ar.model(input_ids=ids, use_cache=False).last_hidden_state
        return head(h)[0, -1]


def _base_activation(target: Path, ids: torch.Tensor, layer: int) -> torch.Tensor:
    model, _ = load_base(target)
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[layer + 1][0, -1]


def _block_output(target: Path, ids: torch.Tensor, block: int) -> torch.Tensor:
    """Raw output of decoder block ``block`` via a hook (hidden_states[-1] is post-norm for the last block)."""
    model, _ = load_base(target)
    got = {}
    layer = text_backbone(model).layers[block]
    h = layer.register_forward_hook(lambda m, i, o: got.setdefault("h", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    h.remove()
    return got["h"][0, -1]


# ------------------------------------------------------------------------------------------ AR layout


def test_ar_config_has_k_plus_1_layers(fixture_pair):
    k = fixture_pair.layer
    cfg = _config(fixture_pair.ar)
    base = _config(fixture_pair.target)
    assert cfg["num_hidden_layers"] == k + 1
    assert "text_config" not in cfg and "vision_config" not in cfg and "_name_or_path" not in cfg
    base_types = base.get("text_config", base).get("layer_types")
    if fixture_pair.arch.startswith("gemma3"):
        assert cfg["layer_types"] == base_types[: k + 1]
        assert set(cfg["layer_types"]) == {"sliding_attention", "full_attention"}
    if cfg.get("layer_types") is not None:
        assert len(cfg["layer_types"]) == k + 1


def test_ar_is_text_only_causal_lm(fixture_pair):
    cfg = _config(fixture_pair.ar)
    expected = {"qwen2": "Qwen2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM", "gemma3_mm": "Gemma3ForCausalLM",
                "llama": "LlamaForCausalLM"}[fixture_pair.arch]
    assert cfg["architectures"] == [expected]
    if fixture_pair.arch.startswith("gemma3"):
        assert cfg["model_type"] == "gemma3_text"


def test_av_stays_the_base_checkpoint(fixture_pair):
    av, base = _tree(fixture_pair.av), _tree(fixture_pair.target)
    assert set(av) == set(base) | {"nla_meta.yaml"}
    assert all(av[k] == base[k] for k in base)
    if fixture_pair.arch == "gemma3_mm":
        cfg = _config(fixture_pair.av)
        assert cfg["architectures"] == ["Gemma3ForConditionalGeneration"] and "vision_config" in cfg


def test_ar_weights_are_embeddings_and_blocks_0_to_k_only(fixture_pair):
    k = fixture_pair.layer
    keys = _weight_keys(fixture_pair.ar)
    assert "model.embed_tokens.weight" in keys
    assert not [x for x in keys if x.endswith("norm.weight") and "layers." not in x]
    assert not [x for x in keys if "lm_head" in x]
    assert _layer_indices(keys) == set(range(k + 1))
    assert all(x == "model.embed_tokens.weight" or x.startswith("model.layers.") for x in keys)


def test_value_head_is_identity_weight_only(fixture_pair):
    d = _hidden(_config(fixture_pair.target))
    with safe_open(str(fixture_pair.ar / "value_head.safetensors"), "pt") as s:
        assert list(s.keys()) == ["weight"]
        w = s.get_tensor("weight")
    assert tuple(w.shape) == (d, d) and w.dtype == torch.bfloat16
    assert torch.equal(w.float(), torch.eye(d))


def test_ar_tokenizer_pads_right(fixture_pair):
    assert _tokenizer(fixture_pair.ar).padding_side == "right"
    expected_av = "right" if fixture_pair.arch == "qwen2" else "left"  # like the real tokenizers
    assert _tokenizer(fixture_pair.av).padding_side == expected_av


# --------------------------------------------------------------------------------- markers & prompts


def test_marker_is_one_token_and_matches_sidecar(fixture_pair):
    sc = read_sidecar(fixture_pair.av)
    tok = _tokenizer(fixture_pair.av)
    ch = sc.tokens.injection_char
    assert ch == MARKERS[TOKENIZER_FAMILY[fixture_pair.arch]]
    assert tok.encode(ch, add_special_tokens=False) == [sc.tokens.injection_token_id]
    assert choose_marker(tok) == (ch, sc.tokens.injection_token_id)
    assert sc.tokens.injection_token_id not in tok.all_special_ids  # an ordinary vocabulary token


def test_av_prompt_marker_once_with_pinned_neighbours(fixture_pair):
    sc = read_sidecar(fixture_pair.av)
    tok = _tokenizer(fixture_pair.av)
    ids = av_prompt_ids(tok, sc.tokens.injection_char, sc.av_template)
    assert ids.count(sc.tokens.injection_token_id) == 1
    site = locate_marker(ids, sc.tokens.injection_token_id)
    pinned = (sc.tokens.injection_left_neighbor_id, sc.tokens.injection_right_neighbor_id)
    assert (site.left_id, site.right_id) == pinned
    assert tok.convert_ids_to_tokens([site.left_id, site.right_id]) == [">", "</"]
    ar_sc = read_sidecar(fixture_pair.ar)
    assert ar_sc.tokens == sc.tokens.model_copy(update={"critic_suffix_ids": ar_sc.tokens.critic_suffix_ids})


def test_av_prompt_default_system_and_bos(fixture_pair):
    tok = _tokenizer(fixture_pair.av)
    sc = read_sidecar(fixture_pair.av)
    ids = av_prompt_ids(tok, sc.tokens.injection_char, sc.av_template)
    text = tok.decode(ids)
    if fixture_pair.arch == "qwen2":
        assert tok.bos_token_id is None
        assert text.startswith(f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\n")
        assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    else:
        bos = tok.bos_token_id
        assert bos is not None and ids[0] == bos and ids.count(bos) == 1
        if fixture_pair.arch == "llama":
            assert LLAMA_DATE_HEADER in text
            assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
        else:
            assert text.startswith("<bos><start_of_turn>user\nYou are a meticulous")
            assert text.endswith("<end_of_turn>\n<start_of_turn>model\n")


def test_ar_sidecar_and_suffix(fixture_pair):
    sc = read_sidecar(fixture_pair.ar)
    k = fixture_pair.layer
    d = _hidden(_config(fixture_pair.target))
    raw = yaml.safe_load((fixture_pair.ar / "nla_meta.yaml").read_text())
    assert raw["critic"] == {"extraction_layer_index": k} and raw["extraction_layer_index"] == k
    assert sc.role == "ar" and sc.layer == k and sc.d_model == d
    assert sc.injection_scale is None and sc.mse_scale == pytest.approx(math.sqrt(d))
    tok = _tokenizer(fixture_pair.ar)
    assert sc.tokens.critic_suffix_ids == tok.encode("</text> <summary>", add_special_tokens=False)[1:]
    ids = _ar_prompt_ids(tok)[0].tolist()
    assert ids[-len(sc.tokens.critic_suffix_ids):] == sc.tokens.critic_suffix_ids  # kitft AR-SFT startup check
    if fixture_pair.arch != "qwen2":
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1  # AR always adds BOS


# ------------------------------------------------------------------------------ numerical contract


def test_untrained_ar_reproduces_base_activation(fixture_pair):
    k = fixture_pair.layer
    ids = _ar_prompt_ids(_tokenizer(fixture_pair.ar))
    pred = _ar_values(fixture_pair.ar, ids)
    gold = _base_activation(fixture_pair.target, ids, k)
    assert gold.norm() > 1.0  # not degenerate
    torch.testing.assert_close(pred, gold, atol=1e-5, rtol=0)
    # ... and the neighbouring layers are different, so the check has teeth.
    other = _base_activation(fixture_pair.target, ids, k + 1)
    assert (other - gold).abs().max() > 1e-2


def test_injection_scale_rounds_up_the_calibration_norm(fixture_pair):
    sc = read_sidecar(fixture_pair.av)
    tok = _tokenizer(fixture_pair.target)
    norms = []
    for prompt in CALIBRATION_PROMPTS:  # recomputed independently: output of block K via a hook
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        norms.append(float(_block_output(fixture_pair.target, ids, fixture_pair.layer).norm()))
    mean = sum(norms) / len(norms)
    model, _ = load_base(fixture_pair.target)
    assert sum(calibration_norms(model, tok, fixture_pair.layer)) / len(norms) == pytest.approx(mean, rel=1e-5)
    assert sc.injection_scale > 0
    assert mean <= sc.injection_scale < mean * 1.1
    assert sc.injection_scale == round_up_sig(mean, 2)
    assert sc.mse_scale == pytest.approx(math.sqrt(sc.d_model))


def test_base_model_sampling_is_varied(fixture_pair):
    model, tok = load_base(fixture_pair.target)
    ids = av_prompt_ids(tok, "x")
    torch.manual_seed(0)
    out = model.generate(torch.tensor([ids]), do_sample=True, max_new_tokens=24, min_new_tokens=24,
                         pad_token_id=tok.pad_token_id)
    assert len(set(out[0, len(ids):].tolist())) >= 6


# ---------------------------------------------------------------------------------------- defects


@pytest.mark.parametrize("defect", DEFECTS)
def test_each_defect_is_single_and_intended(fixture_pairs, defect, tmp_path):
    pair = fixture_pairs["qwen2"] if defect != "ar_k_plus_2" else fixture_pairs["gemma3_mm"]
    bad = make_defect(pair, defect, tmp_path / defect)
    before, after = _pair_tree(pair), _pair_tree(bad)
    changed = {f for f in before.keys() | after.keys() if before.get(f) != after.get(f)}
    k = pair.layer
    if defect == "missing_value_head":
        assert changed == {"ar/value_head.safetensors"} and "ar/value_head.safetensors" not in after
    elif defect == "missing_sidecar":
        assert changed == {"av/nla_meta.yaml"} and "av/nla_meta.yaml" not in after
    elif defect in ("wrong_marker_id", "d_model_mismatch"):
        assert changed == {"av/nla_meta.yaml"}
        old = yaml.safe_load((pair.av / "nla_meta.yaml").read_text())
        new = yaml.safe_load((bad.av / "nla_meta.yaml").read_text())
        if defect == "wrong_marker_id":
            assert new["tokens"]["injection_token_id"] == old["tokens"]["injection_token_id"] + 1
            new["tokens"]["injection_token_id"] -= 1
        else:
            assert new["d_model"] == _hidden(_config(pair.target)) + 1
            new["d_model"] -= 1
        assert new == old
    elif defect == "ar_k_plus_2":
        assert changed == {"ar/config.json", "ar/model.safetensors"}
        assert _config(bad.ar)["num_hidden_layers"] == k + 2
        assert len(_config(bad.ar)["layer_types"]) == k + 2
        assert _layer_indices(_weight_keys(bad.ar)) == set(range(k + 2))
        ids = _ar_prompt_ids(_tokenizer(bad.ar))
        pred = _ar_values(bad.ar, ids)
        assert (pred - _base_activation(pair.target, ids, k)).abs().max() > 1e-2  # the defect bites
        torch.testing.assert_close(pred, _block_output(pair.target, ids, k + 1), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------- builder misc


@pytest.mark.parametrize("bad_k", [-1, 3, 4])
def test_builder_rejects_out_of_range_layer(fixture_pairs, bad_k, tmp_path):
    with pytest.raises(NLALabError, match="out of range"):
        build_untrained_pair(fixture_pairs["llama"].target, tmp_path, bad_k)


def test_builder_explicit_values_and_wrong_marker(fixture_pairs, tmp_path):
    target = fixture_pairs["llama"].target
    p = build_untrained_pair(target, tmp_path / "p", 1, injection_scale=30.0, mse_scale=None)
    assert p.injection_scale == 30.0 and read_sidecar(p.av).injection_scale == 30.0
    assert _config(p.ar)["num_hidden_layers"] == 2
    with pytest.raises(NLALabError, match="not a single token"):
        build_untrained_pair(target, tmp_path / "q", 1, marker="\u3200")


def test_round_up_sig():
    assert round_up_sig(123.4) == 130.0
    assert round_up_sig(120.0) == 120.0
    assert round_up_sig(0.0341) == 0.035
    assert round_up_sig(99.01) == 100.0
    assert round_up_sig(74123.0) == 75000.0


def test_tokenizers_are_deterministic():
    for fam in ("qwen2", "gemma3", "llama"):
        assert make_tokenizer(fam).get_vocab() == make_tokenizer(fam).get_vocab()
