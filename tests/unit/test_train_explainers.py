"""Explainers: context (self-supervised), api (against a local mock server), local (a tiny model)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nlalab.errors import NLALabError
from nlalab.train.explainers import (
    INSTRUCTION_PROMPT, ApiExplainer, ContextExplainer, ExplainInput, LocalExplainer, postprocess,
)


def test_instruction_prompt_is_kitfts():
    assert INSTRUCTION_PROMPT.startswith("A language model needs to predict what text comes next")
    assert INSTRUCTION_PROMPT.endswith("Text to analyze:\n\n<begin_text>{text}<end_text>")
    assert "\u2014 IMPORTANT: keep to ~80-100 words total and ALWAYS close the tag:\n<analysis>\n" in INSTRUCTION_PROMPT
    assert not INSTRUCTION_PROMPT.endswith("\n")


def test_postprocess_follows_kitft():
    raw = ("blah <analysis>\n- **Python code**: a function body\n\n2. Second feature_*\n"
           "(a) final token is a colon\n</analysis> tail")
    assert postprocess(raw) == "Python code: a function body\n\nSecond feature\n\nfinal token is a colon"
    assert postprocess("<analysis>\nonly one line\n</analysis>") is None  # < 2 paragraphs
    assert postprocess("<analysis>\na\nb\n") is None  # no closing tag


def test_context_explainer_uses_the_text_itself():
    ex = ContextExplainer()
    it = ExplainInput(prefix="def add(a, b):\n    return a + b  # sum two numbers", continuation="\n\nclass Model:",
                      category="code", source="mypkg")
    e = ex.explain([it])[0]
    paras = e.split("\n\n")
    assert len(paras) == 3 and "Python source code from mypkg" in paras[0]
    assert 'ends with "' in paras[1] and "two numbers" in paras[1]
    assert "class Model:" in paras[2]
    chat = ex.one(ExplainInput(prefix="What is the capital of Brazil?", kind="chat_last", category="chat"))
    assert "capital" in chat and "reply is about to begin" in chat
    assert ex.one(ExplainInput(prefix="  ")) is None


class _Mock(BaseHTTPRequestHandler):
    replies: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        status, content = type(self).replies.pop(0) if type(self).replies else (200, "<analysis>\na\nb\n</analysis>")
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *a):
        pass


@pytest.fixture
def mock_server():
    _Mock.replies, _Mock.seen = [], []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Mock)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", _Mock
    srv.shutdown()
    srv.server_close()
    th.join(timeout=5)


def test_api_explainer_against_mock_server(mock_server, monkeypatch):
    url, mock = mock_server
    monkeypatch.setenv("NLALAB_TEST_KEY", "sk-test")
    mock.replies = [(200, "Sure.\n<analysis>\n1. Formal **prose** about cats\n- The text ends mid-sentence\n</analysis>"),
                    (500, "oops"), (200, "<analysis>\nx\ny\n</analysis>"),  # second item: one retry
                    (200, "no tags at all")]  # third item: dropped
    ex = ApiExplainer(url, "mock-model", api_key_env="NLALAB_TEST_KEY", workers=1, retries=1, backoff_s=0.01,
                      max_requests=10, timeout_s=5)
    items = [ExplainInput(prefix="The cat sat on"), ExplainInput(prefix="second"), ExplainInput(prefix="third")]
    out = ex.explain(items)
    assert out == ["Formal prose about cats\n\nThe text ends mid-sentence", "x\n\ny", None]
    assert len(mock.seen) == 4 and ex.requests_made == 4
    first = mock.seen[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test"
    assert first["body"]["model"] == "mock-model" and first["body"]["max_tokens"] == 300
    msg = first["body"]["messages"][0]
    assert msg["role"] == "user" and msg["content"] == INSTRUCTION_PROMPT.replace("{text}", "The cat sat on")
    # the request budget is a hard cap
    ex2 = ApiExplainer(url, "m", api_key_env=None, workers=1, retries=0, max_requests=1, timeout_s=5)
    assert ex2.one(ExplainInput(prefix="a")) == "a\n\nb"
    with pytest.raises(NLALabError, match="budget"):
        ex2.one(ExplainInput(prefix="b"))


def test_local_explainer_runs_a_model(fixture_pairs):
    from nlalab.testing import torch_threads

    pair = fixture_pairs["qwen2"]
    with torch_threads(1):
        ex = LocalExplainer(str(pair.target), device="cpu", max_new_tokens=6, batch_size=2, temperature=0)
        out = ex.explain([ExplainInput(prefix="The cat"), ExplainInput(prefix="A dog"), ExplainInput(prefix="x")])
    assert len(out) == 3 and all(o is None or isinstance(o, str) for o in out)
    assert ex.describe()["explainer"] == "local"
