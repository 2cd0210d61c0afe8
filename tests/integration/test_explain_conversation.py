"""explain_conversation: every token of a chat (prompt + the target's greedy reply) on a fixture pair."""

from __future__ import annotations

import json

import pytest
import torch

from nlalab.errors import UsageError
from nlalab.explain import (check_conversation, content_start, conversation_ids, explain_conversation,
                            greedy_reply, load_conversation, render_conversation_json,
                            render_conversation_markdown, render_conversation_text)
from nlalab.pairs.load import load_ar, load_av, load_target
from nlalab.pairs.registry import PairSpec, registered
from nlalab.pairs.resolve import resolve_pair
from nlalab.testing import torch_threads
from nlalab.verbalize import GenerationSettings

CHAT = [{"role": "user", "content": "What are you hiding?"}]


@pytest.fixture(scope="module")
def run(fixture_pairs):
    p = fixture_pairs["qwen2"]
    with torch_threads(1), registered("tiny-chat", av=str(p.av), ar=str(p.ar), target=str(p.target), layer=p.layer,
                                      n_layers=4, d_model=64, b_rv=0.05, b_rv_source="fixture constant"):
        dirs = resolve_pair(PairSpec(name="tiny-chat", av=str(p.av), ar=str(p.ar), target=str(p.target),
                                     layer=p.layer))
        models = {"target": load_target(p.target, p.layer, truncate=False), "av": load_av(p.av),
                  "ar": load_ar(p.ar, layer=p.layer)}
        res = explain_conversation(dirs, CHAT, reply_tokens=5, k=3, models=models,
                                   settings=GenerationSettings(greedy=True, max_new_tokens=12))
    return res, models, p


def test_every_token_prompt_and_reply(run):
    res, models, p = run
    tok = models["target"].tokenizer
    prompt = conversation_ids(tok, CHAT)
    reply = greedy_reply(models["target"].model, tok, prompt, 5)
    h = res.header
    assert (h["n_prompt"], h["n_reply"]) == (len(prompt), len(reply)) and 1 <= len(reply) <= 5
    assert [r["position"] for r in res.tokens] == list(range(len(prompt) + len(reply)))
    assert [r["role"] for r in res.tokens] == ["prompt"] * len(prompt) + ["reply"] * len(reply)
    assert [r["token_id"] for r in res.tokens] == prompt + reply
    # the raw norm is the block-K output of that token, the one capture() takes at the last prompt token
    from nlalab.capture import capture

    last = capture(models["target"].model, tok, [CHAT[0]["content"]], p.layer).vectors[0]
    assert res.tokens[len(prompt) - 1]["norm"] == pytest.approx(float(last.norm()), rel=1e-4)


def test_scores_use_the_training_brv_and_agree_with_metrics(run):
    res, models, p = run
    b = res.header["b_rv"]
    assert (b["choice"], b["value"]) == ("registry", 0.05) and "fixture constant" in b["source"]
    assert b["own_value"] is not None and b["own_source"].startswith("this conversation's")
    for r in res.tokens:
        assert r["fve_nrm"] == pytest.approx(1 - r["mse_nrm"] / 0.05, abs=1e-9)
        assert r["mse_nrm"] == pytest.approx(2 * (1 - r["cos"]), abs=1e-6)  # mse_scale = sqrt(d)
    assert any("LOW-VARIANCE" in w for w in res.warnings)  # 0.05 < 0.1, like Gemma's layers


def test_summary_leaves_out_scaffold_and_incomplete(run):
    res, models, _ = run
    start = content_start(models["target"].tokenizer, CHAT)
    assert res.summary["from_position"] == start > 0
    kept = [r for r in res.tokens if r["position"] >= start
            and not (r["missing_close_tag"] or r["truncated"] or r["empty"])]
    a = res.summary["all"]
    assert a["n"] == len(kept)
    if kept:
        assert a["fve_nrm"]["mean"] == pytest.approx(sum(r["fve_nrm"] for r in kept) / len(kept))
    assert res.summary["by_role"]["reply"]["n"] + res.summary["by_role"]["prompt"]["n"] == a["n"]
    everything = [r for r in res.tokens if r["position"] >= start]
    assert res.summary["all_rows"]["n"] == len(everything) == a["n"] + res.summary["excluded_incomplete"]
    assert res.summary["all_rows"]["mse_nrm"]["mean"] == pytest.approx(
        sum(r["mse_nrm"] for r in everything) / len(everything))


def test_sampled_variance_section(run):
    res, models, _ = run
    v = res.variance
    special = set(models["target"].tokenizer.all_special_ids)
    ids = [r["token_id"] for r in res.tokens]
    assert v["position"] == max(i for i, t in enumerate(ids) if t not in special)
    assert v["k"] == 3 and len(v["samples"]) == 3 and v["temperature"] == 1.0
    ms = [s["mse_nrm"] for s in v["samples"]]
    assert v["mse_nrm"]["mean"] == pytest.approx(sum(ms) / 3) and v["mse_nrm"]["min"] == min(ms)
    assert v["greedy"]["mse_nrm"] == res.tokens[v["position"]]["mse_nrm"]


def test_renderers(run):
    res, _, _ = run
    text = render_conversation_text(res)
    assert "PROMPT" in text and "REPLY" in text and "fve_nrm = 1 - mse_nrm / 0.05" in text
    assert "Sampling variance at position" in text and "LOW-VARIANCE" in text
    md = render_conversation_markdown(res)
    assert md.count("\n| ") >= len(res.tokens) and "| reply |" in md
    d = json.loads(render_conversation_json(res))
    assert len(d["tokens"]) == len(res.tokens) and d["header"]["b_rv"]["value"] == 0.05


def test_content_start_and_conversation_files(fixture_pairs, tmp_path):
    tok = load_target(fixture_pairs["qwen2"].target, 2).tokenizer
    ids = conversation_ids(tok, CHAT)
    s = content_start(tok, CHAT)
    assert tok.decode(ids[s:]).startswith("What")  # the first token of the user's own text
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"messages": CHAT}))
    assert load_conversation(f) == CHAT
    t = tmp_path / "q.txt"
    t.write_text("Hello there\n")
    assert load_conversation(t) == [{"role": "user", "content": "Hello there"}]
    for bad, needle in [([], "non-empty list"), ([{"role": "bot", "content": "x"}], "role system|user|assistant"),
                        (CHAT + [{"role": "assistant", "content": "a"}], "last message")]:
        with pytest.raises(UsageError, match=needle):
            check_conversation(bad)
    with pytest.raises(UsageError, match="no such file"):
        load_conversation(tmp_path / "nope.json")


def test_capture_with_reply_positions(run):
    from nlalab.capture_reply import capture_with_reply

    res, models, p = run
    tg = models["target"]
    with torch_threads(1):
        cap = capture_with_reply(tg.model, tg.tokenizer, [CHAT[0]["content"], "Hi"], p.layer, reply_tokens=5,
                                 ids=["a", "b"])
        allpos = capture_with_reply(tg.model, tg.tokenizer, [CHAT[0]["content"]], p.layer, positions="all",
                                    reply_tokens=5, ids=["a"])
    a_rows = [m for m in cap.meta if m["item_id"] == "a"]
    # same chat as the conversation run: the reply rows are that run's reply tokens, with the same vectors
    want = [r for r in res.tokens if r["role"] == "reply"]
    assert [m["token_index"] for m in a_rows] == [r["position"] for r in want]
    assert [m["reply_index"] for m in a_rows] == list(range(len(want)))
    assert all(m["role"] == "reply" for m in cap.meta)
    assert [m["norm"] for m in a_rows] == pytest.approx([r["norm"] for r in want], rel=1e-5)
    assert [m["role"] for m in allpos.meta] == [r["role"] for r in res.tokens]
    torch.testing.assert_close(allpos.vectors[[m["token_index"] for m in a_rows]], cap.vectors[:len(a_rows)])


def test_explain_prompts_uses_the_training_brv_of_a_registered_pair(fixture_pairs):
    from nlalab.explain import explain

    p = fixture_pairs["llama"]
    gs = GenerationSettings(greedy=True, max_new_tokens=6)
    with torch_threads(1):
        with registered("tiny-llama", av=str(p.av), ar=str(p.ar), target=str(p.target), layer=p.layer, n_layers=4,
                        d_model=64, b_rv=0.5, b_rv_source="fixture constant"):
            dirs = resolve_pair(PairSpec(name="tiny-llama", av=str(p.av), ar=str(p.ar), target=str(p.target),
                                         layer=p.layer))
            res = explain(dirs, prompts=["Hi"], settings=gs)
        assert res.b_rv == 0.5 and "fixture constant" in res.b_rv_source
        assert res.brv["own_value"] is None  # one vector: no own B_rv, and it says why
        assert res.rows[0]["fve_nrm"] == pytest.approx(1 - res.rows[0]["mse_nrm"] / 0.5)
        anon = resolve_pair(PairSpec(av=str(p.av), ar=str(p.ar), target=str(p.target), layer=p.layer))
        res2 = explain(anon, prompts=["Hi"], settings=gs)
    assert res2.b_rv is None and "fve_nrm" not in res2.rows[0]  # unregistered, 1 vector: no denominator


def test_summarize_tokens_known_answer():
    from nlalab.explain import summarize_tokens

    def row(pos, role, fve, **flags):
        return {"position": pos, "role": role, "fve_nrm": fve, "mse_nrm": 0.1 * (1 - fve), "cos": 1 - 0.05 * (1 - fve),
                **flags}

    rows = [row(0, "prompt", -3.0), row(1, "prompt", 0.9), row(2, "prompt", 0.6),
            row(3, "reply", -0.5), row(4, "reply", 0.2, missing_close_tag=True)]
    s = summarize_tokens(rows, start=1)
    a = s["all"]
    assert a["n"] == 3 and s["excluded_incomplete"] == 1
    assert a["fve_nrm"]["mean"] == pytest.approx((0.9 + 0.6 - 0.5) / 3) and a["fve_nrm"]["median"] == 0.6
    assert (a["fve_gt_0.5"], a["fve_gt_0.8"], a["fve_lt_0"]) == (2, 1, 1)
    assert s["by_role"]["prompt"]["n"] == 2 and s["by_role"]["reply"]["fve_nrm"]["mean"] == -0.5
    assert s["all_rows"]["n"] == 4 and s["all_rows"]["fve_nrm"]["mean"] == pytest.approx((0.9 + 0.6 - 0.5 + 0.2) / 4)
    assert summarize_tokens(rows, start=1, score_incomplete=True)["all"]["n"] == 4


def test_cli_explain_conversation_markdown(fixture_pairs, tmp_path):
    import json as _json

    from typer.testing import CliRunner

    from nlalab.cli import app

    p = fixture_pairs["qwen2"]
    chat = tmp_path / "chat.json"
    chat.write_text(_json.dumps([{"role": "user", "content": "What is the capital of Brazil?"}]))
    r = CliRunner().invoke(app, ["explain", "--av", str(p.av), "--ar", str(p.ar), "--target", str(p.target),
                                 "--conversation", str(chat), "--reply-tokens", "2", "--k", "2",
                                 "--max-new-tokens", "4", "--format", "markdown"])
    assert r.exit_code == 0, r.output
    assert "| role" in r.output.lower() or "role" in r.output
    assert "reply" in r.output and "prompt" in r.output
