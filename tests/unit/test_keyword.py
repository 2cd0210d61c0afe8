"""Keyword recall (seed section 2.3) and lexicon hits (seed section 4.3): hand-computed answers."""

from __future__ import annotations

import json

import pytest

from nlalab.errors import NLALabError
from nlalab.scorers import KeywordScorer, Scorer, get_scorer
from nlalab.scorers.keyword import (
    content_words,
    keyword_hit,
    keyword_recall,
    lexicon_hits,
    load_lexicon,
    load_stopwords,
    tokens,
    top_category,
)


# --- content words ---------------------------------------------------------------------------------


def test_content_words_hand_example():
    text = "The Quick brown fox jumps over the lazy dog's back; n² isn't 42, IPv4 is."
    # tokens: the quick brown fox jumps over the lazy dog s back n isn t 42 ipv4 is
    # >= 4 chars: quick brown jumps over lazy back ipv4; "over" is a stopword.
    assert content_words(text) == {"quick", "brown", "jumps", "lazy", "back", "ipv4"}


def test_tokenisation_is_ascii_alphanumeric_runs():
    assert tokens("requests.get(timeout=30)") == ["requests", "get", "timeout", "30"]
    assert content_words("tests/test_processor.py::test_parse_empty_batch") == {
        "tests", "test", "processor", "parse", "empty", "batch"
    }
    assert tokens("n²") == ["n"]  # the superscript is not ASCII: it splits, leaving "n"
    assert content_words("Prove that the sum of the first n odd integers equals n².") == {
        "prove", "first", "integers", "equals"
    }
    assert content_words("café naïve 1234") == {"1234"}  # caf / na / ve are < 4 chars


def test_stopwords_excluded_and_overridable():
    assert content_words("these were their words, because they should") == {"words"}
    assert content_words("these words", stopwords=set()) == {"these", "words"}
    assert content_words("alpha beta gamma", stopwords={"BETA"}) == {"alpha", "gamma"}


def test_shipped_stopword_list():
    sw = load_stopwords()
    assert 150 <= len(sw) <= 600
    assert {"the", "because", "should", "themselves", "which", "about"} <= sw
    assert all(w == w.lower() and w.isalnum() for w in sw)
    assert not any(w.startswith("#") for w in sw)


def test_load_stopwords_from_file(tmp_path):
    p = tmp_path / "sw.txt"
    p.write_text("# mine\nFoo\n\nbar\n")
    assert load_stopwords(p) == {"foo", "bar"}
    with pytest.raises(NLALabError, match="not found"):
        load_stopwords(tmp_path / "none.txt")


# --- recall ----------------------------------------------------------------------------------------


def test_recall_identical_is_one():
    p = "Find all calls to requests.get without a timeout parameter and add timeout=30."
    assert keyword_recall(p, p) == 1.0
    assert keyword_hit(p, p) is True


def test_recall_disjoint_is_zero():
    # Seed section 3.5: the Hamlet prompt and its confabulated explanation share no content word.
    p = "Describe the plot of Hamlet in two sentences."
    e = (
        "Structured wiki format with article template pattern 'J.R.R. Tolkien's famous novel "
        "\"The Lord of the Rings\"' signals a formatted entry defining the story and its protagonist."
    )
    assert keyword_recall(p, e) == 0.0
    assert keyword_hit(p, e) is False


def test_recall_partial_hand_computed():
    # P = {painted, mona, lisa}; E = {leonardo, painted, famous, lisa}: 2 of 3.
    assert keyword_recall("Who painted the Mona Lisa?", "Leonardo painted the famous Lisa.") == pytest.approx(2 / 3)
    assert round(keyword_recall("Who painted the Mona Lisa?", "Leonardo painted the famous Lisa."), 4) == 0.6667
    # Seed section 3.5 faithful pairs: P = {prove, square, root, irrational}, E = {proof, square, root}: 2/4.
    assert keyword_recall("Prove that the square root of 2 is irrational.", "Proof of the Square Root of 2") == 0.5
    # P = {explain, blue} ("sky" is 3 chars, "why" a stopword); E shares only "blue": 1/2.
    assert keyword_recall("Explain why the sky is blue.", "scientific explanation for why the sky appears blue") == 0.5


def test_recall_is_set_based_not_counts():
    assert keyword_recall("python python code", "python") == 0.5  # P = {python, code}


def test_recall_none_when_prompt_has_no_content_words():
    assert keyword_recall("What is 2+2?", "four") is None
    assert keyword_recall("Who is he?", "Who is he?") is None
    assert keyword_hit("What is 2+2?", "anything") is None


def test_recall_case_insensitive():
    assert keyword_recall("PYTHON Function", "python function") == 1.0
    assert keyword_recall("python function", "Python FUNCTION") == 1.0


def test_recall_respects_custom_stopwords():
    # With "prove" as a stopword P = {square, root, irrational}: 2/3.
    r = keyword_recall("Prove that the square root of 2 is irrational.", "square root", stopwords={"prove", "that"})
    assert r == pytest.approx(2 / 3)


# --- scorer interface ------------------------------------------------------------------------------


def test_keyword_scorer_and_registry():
    s = get_scorer("keyword")
    assert isinstance(s, KeywordScorer) and isinstance(s, Scorer) and s.name == "keyword"
    got = s.score(["Who painted the Mona Lisa?", "What is 2+2?", "python code"], ["painted", "four", "java"])
    assert got[0] == pytest.approx(1 / 3) and got[1] is None and got[2] == 0.0


def test_get_scorer_unknown_lists_available():
    with pytest.raises(NLALabError) as e:
        get_scorer("bleu")
    assert "'bleu'" in str(e.value) and "keyword" in str(e.value)


def test_scorer_length_mismatch():
    with pytest.raises(NLALabError, match="2 prompts and 1 explanations"):
        KeywordScorer().score(["a", "b"], ["a"])


# --- lexicons --------------------------------------------------------------------------------------


def test_lexicon_hits_hand_example_shipped():
    lex = load_lexicon()
    e = "Structured wiki article format with a Python code snippet, a math proof and a PROOF sketch."
    assert lexicon_hits(e, lex) == {"chat": 2, "code": 3, "agent": 0, "reasoning": 2}


def test_lexicon_hits_no_length_or_stopword_filter():
    lex = {"a": ["sql", "the", "SQL"], "b": ["git", "node"]}
    # "sql" and "the" are < 4 chars / a stopword yet count; repeats count once; node_modules -> node, modules.
    assert lexicon_hits("The SQL and the sql in node_modules", lex) == {"a": 2, "b": 1}


def test_top_category():
    assert top_category({"chat": 1.67, "code": 0.0, "agent": 0.0, "reasoning": 1.0}) == "chat"
    assert top_category({"chat": 0, "code": 0}) is None
    assert top_category({"chat": 2, "code": 2}) is None


def test_shipped_lexicon_shape_and_disjoint():
    lex = load_lexicon()
    assert list(lex) == ["chat", "code", "agent", "reasoning"]
    seen: dict[str, str] = {}
    for cat, words in lex.items():
        assert 25 <= len(words) <= 60, cat
        assert len(set(words)) == len(words)
        for w in words:
            assert w == w.lower() and w.isascii() and w.isalnum(), w
            assert w not in seen, f"{w!r} in both {seen.get(w)} and {cat}"
            seen[w] = cat
    assert {"article", "wiki"} <= set(lex["chat"])
    assert {"python", "function"} <= set(lex["code"])
    assert {"file", "repository", "test"} <= set(lex["agent"])
    assert {"math", "proof", "theorem"} <= set(lex["reasoning"])
    assert load_lexicon("seed4_v1") == lex


def test_load_lexicon_user_file_and_errors(tmp_path):
    p = tmp_path / "lex.json"
    p.write_text(json.dumps({"version": 1, "categories": {"x": ["Alpha", "beta"], "y": ["gamma"]}}))
    assert load_lexicon(p) == {"x": ["alpha", "beta"], "y": ["gamma"]}

    p.write_text(json.dumps({"version": 1, "categories": {"x": ["alpha"], "y": ["ALPHA"]}}))
    with pytest.raises(NLALabError, match="in both 'x' and 'y'"):
        load_lexicon(p)
    assert load_lexicon(p, allow_overlap=True) == {"x": ["alpha"], "y": ["alpha"]}

    p.write_text(json.dumps({"version": 1, "categories": {"x": ["node_modules"]}}))
    with pytest.raises(NLALabError, match="not a single ASCII alphanumeric word"):
        load_lexicon(p)

    p.write_text(json.dumps({"chat": ["a"]}))
    with pytest.raises(NLALabError, match="'categories'"):
        load_lexicon(p)

    p.write_text('{"version": 1,\n "categories": }')
    with pytest.raises(NLALabError, match="line 2: malformed JSON"):
        load_lexicon(p)

    with pytest.raises(NLALabError, match="not found"):
        load_lexicon(tmp_path / "none.json")


def test_every_shipped_prompt_has_content_words():
    from nlalab.corpus import load_corpus

    items = load_corpus()
    assert all(keyword_recall(it.prompt, it.prompt) == 1.0 for it in items)
    assert content_words(items[0].prompt) == {"capital", "brazil"}
