"""Generation backends: the registry's choices and capabilities, per-row seeds, and the fast engine's plain
mode (prompts of different lengths, no injection) giving the loop backend's tokens on CPU fixtures."""

import pytest
import torch

from nlalab.errors import UsageError
from nlalab.pairs.load import av_eos_ids, load_av, load_target
from nlalab.testing import chat_prompt_ids, torch_threads
from nlalab.verbalize import GenerationSettings, backends, verbalize
from nlalab.verbalize.fast.plain import common_prefix
from nlalab.verbalize.generate import resolve_engine, stream_keys
from nlalab.verbalize.plain import generate_texts
from nlalab.verbalize.sampling import row_keys


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def test_registry_capabilities_and_auto(fixture_pairs):
    assert set(backends.names()) >= {"loop", "hf", "fast"}
    assert backends.capabilities("hf").per_row_sampling is False and backends.capabilities("hf").multi_gpu is False
    assert backends.capabilities("fast").plain and backends.capabilities("fast").prefix_sharing
    av = load_av(fixture_pairs["llama"].av)
    assert resolve_engine("auto", av) == "fast"  # CPU fast path
    assert resolve_engine("loop", av) == "loop"
    assert backends.resolve("hf", av.model, plain=True) == "loop"  # hf has no plain mode
    with pytest.raises(UsageError, match="Unknown generation engine 'nope'"):
        backends.get("nope")
    with pytest.raises(UsageError):
        verbalize(av, torch.zeros(1, av.d_model), settings=GenerationSettings(engine="nope", max_new_tokens=2))


def test_auto_falls_back_to_loop_for_unsupported_models(fixture_pairs, monkeypatch):
    av = load_av(fixture_pairs["qwen2"].av)
    monkeypatch.setattr(av.model.config, "model_type", "mystery")
    assert resolve_engine("auto", av) == "loop"


def test_stream_keys_per_row_seeds_equal_per_call_seeds():
    """(seed, key) pairs give each row the stream it would get in a call with that seed."""
    a = stream_keys(0, [(7, 3), (9, 4)], [0, 1, 1], [0, 0, 2], "cpu")
    assert a[0] == row_keys(7, torch.tensor([3]), torch.tensor([0]))[0]
    assert torch.equal(a[1:], row_keys(9, torch.tensor([4, 4]), torch.tensor([0, 2])))
    assert torch.equal(stream_keys(5, [11, 12], [1, 0], [1, 1], "cpu"),
                       row_keys(5, torch.tensor([12, 11]), torch.tensor([1, 1])))


def test_common_prefix():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix([[1, 2], [1, 2, 3]]) == 1  # each prompt keeps one token of its own
    assert common_prefix([[4, 5], [1, 2]]) == 0


def _prompts(tok, texts):
    return chat_prompt_ids(tok, texts)


@pytest.mark.parametrize("name", ["qwen2", "gemma3_text", "llama"])
def test_plain_fast_equals_loop(fixture_pairs, name):
    p = fixture_pairs[name]
    tg = load_target(p.target, p.layer, truncate=False)
    tok = tg.tokenizer
    prompts = _prompts(tok, ["Hi", "What is the capital of Brazil and why?", "Prove it.", "x " * 30])
    eos = av_eos_ids(tok, tg.model)
    for kw in (dict(greedy=True), dict(temperature=1.0, seed=3), dict(temperature=0.8, top_k=20, top_p=0.9)):
        loop = generate_texts(tg.model, tok, prompts, eos, 2, [5, 6, 7, 8],
                              GenerationSettings(max_new_tokens=14, batch_size=8, engine="loop", **kw))
        fast = generate_texts(tg.model, tok, prompts, eos, 2, [5, 6, 7, 8],
                              GenerationSettings(max_new_tokens=14, batch_size=3, engine="fast", **kw))
        assert [(r.vector_index, r.sample) for r in fast] == [(r.vector_index, r.sample) for r in loop]
        assert [r.token_ids for r in fast] == [r.token_ids for r in loop], (name, kw)
        assert [r.to_dict() for r in fast] == [r.to_dict() for r in loop]
    # the default (auto) on CPU is the fast plain path, with the same records
    auto = generate_texts(tg.model, tok, prompts, eos, 1, [0, 1, 2, 3], GenerationSettings(max_new_tokens=8, seed=1))
    ref = generate_texts(tg.model, tok, prompts, eos, 1, [0, 1, 2, 3],
                         GenerationSettings(max_new_tokens=8, seed=1, engine="loop"))
    assert [r.token_ids for r in auto] == [r.token_ids for r in ref]
    assert len({tuple(r.token_ids) for r in ref}) > 1


def test_auto_uses_loop_while_the_model_has_forward_hooks(fixture_pairs):
    """The fast engine computes without calling module forwards: a hook on the AV must not be skipped."""
    from nlalab.pairs import arch

    av = load_av(fixture_pairs["llama"].av)
    h = arch.decoder_layers(av.model)[1].register_forward_hook(lambda *a: None)
    try:
        assert resolve_engine("auto", av) == "loop"
        assert "forward hooks" in backends.get("fast").unsupported(av.model)
    finally:
        h.remove()
    assert resolve_engine("auto", av) == "fast"


def test_families_are_the_one_source(fixture_pairs):
    """Fixture arches, the fast engine's model types and the embedding scale all come from pairs.families."""
    from nlalab.pairs import arch, families
    from nlalab.testing.models import ARCHES, TOKENIZER_FAMILY
    from nlalab.verbalize import fast

    assert TOKENIZER_FAMILY == {"qwen2": "qwen2", "gemma3_text": "gemma3", "gemma3_mm": "gemma3", "llama": "llama"}
    assert set(TOKENIZER_FAMILY) == set(ARCHES)
    assert set(fast.SUPPORTED_MODEL_TYPES) == {"llama", "qwen2", "gemma3_text"}
    assert {"gemma3", "gemma3_text"} <= arch.EMBED_SCALED_TYPES and "llama" not in arch.EMBED_SCALED_TYPES
    assert families.family_of("gemma3_text").norm_one_plus_w and families.family_of("mistral") is None
    for name, p in fixture_pairs.items():
        tg = load_target(p.target, p.layer)
        mt = tg.model.config.get_text_config().model_type
        assert families.family_of(mt).name == TOKENIZER_FAMILY[name]


@pytest.mark.parametrize("compact", [0.25, 1e-9])
def test_plain_fast_with_rows_ending_early_equals_loop(fixture_pairs, monkeypatch, compact):
    """Rows that end leave the CPU batch (OPTIONS.compact); every record still equals the loop backend's."""
    from nlalab.verbalize import fast

    p = fixture_pairs["gemma3_text"]
    tg = load_target(p.target, p.layer, truncate=False)
    tok = tg.tokenizer
    prompts = _prompts(tok, ["Hi", "What is the capital of Brazil and why?", "Prove it.", "x " * 20, "a b c"])
    eos = list(range(0, len(tok), 7))  # 1 token in 7 ends a row: rows stop at different steps
    monkeypatch.setattr(fast.OPTIONS, "compact", compact)
    gs = dict(max_new_tokens=20, temperature=1.0, seed=11)
    loop = generate_texts(tg.model, tok, prompts, eos, 3, list(range(5)), GenerationSettings(engine="loop", **gs))
    got = generate_texts(tg.model, tok, prompts, eos, 3, list(range(5)), GenerationSettings(engine="fast", **gs))
    assert len({r.n_new_tokens for r in loop}) > 3 and not all(r.truncated for r in loop)
    assert [r.to_dict(with_tokens=True) for r in got] == [r.to_dict(with_tokens=True) for r in loop]


def test_cpu_thread_policy(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr("os.getloadavg", lambda: (6.0, 6.0, 6.0))
    monkeypatch.delenv("NLALAB_CPU_THREADS", raising=False)
    assert backends.cpu_threads(2) == 1  # oversubscribed: one thread
    monkeypatch.setattr("os.getloadavg", lambda: (1.2, 1.0, 1.0))
    assert backends.cpu_threads(2) == 2
    monkeypatch.setattr("os.getloadavg", lambda: (3.5, 1.0, 1.0))  # moderately loaded: not measured better
    assert backends.cpu_threads(2) == 2
    monkeypatch.setenv("NLALAB_CPU_THREADS", "keep")
    monkeypatch.setattr("os.getloadavg", lambda: (9.0, 9.0, 9.0))
    assert backends.cpu_threads(2) == 2
    monkeypatch.setenv("NLALAB_CPU_THREADS", "3")
    assert backends.cpu_threads(2) == 3
    with torch_threads(2):
        with backends.generation_threads("cpu"):
            assert torch.get_num_threads() == 3
        assert torch.get_num_threads() == 2
        with backends.generation_threads("cuda"):
            assert torch.get_num_threads() == 2
    monkeypatch.setenv("NLALAB_CPU_THREADS", "lots")
    with pytest.raises(UsageError, match="NLALAB_CPU_THREADS"):
        backends.cpu_threads(2)


def test_thread_count_does_not_change_rows(fixture_pairs, monkeypatch):
    av = load_av(fixture_pairs["gemma3_mm"].av)
    torch.manual_seed(1)
    vecs = torch.randn(5, av.d_model)
    got = {}
    for n in ("1", "2"):
        monkeypatch.setenv("NLALAB_CPU_THREADS", n)
        got[n] = [r.token_ids for r in verbalize(av, vecs, k=2, settings=GenerationSettings(max_new_tokens=12))]
    assert got["1"] == got["2"]


def test_library_hooks_do_not_block_the_fast_engine(fixture_pairs):
    """Hooks that transformers/accelerate install to record outputs do not change a module's output; only a
    user's hook makes the fast engine step aside."""
    from nlalab.pairs import arch
    from nlalab.verbalize.fast.weights import user_hooks

    av = load_av(fixture_pairs["qwen2"].av)
    layer = arch.decoder_layers(av.model)[0]

    def recorder(m, a, o):
        return None

    recorder.__module__ = "transformers.utils.output_capturing"
    h = layer.register_forward_hook(recorder)
    try:
        assert user_hooks(layer) == [] and backends.get("fast").unsupported(av.model) is None
    finally:
        h.remove()
