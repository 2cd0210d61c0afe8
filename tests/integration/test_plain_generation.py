"""Left-padded plain generation: a row's tokens do not depend on its batch (blind-explanation control)."""

import torch

from nlalab.pairs.load import av_eos_ids, load_target
from nlalab.testing import chat_prompt_ids
from nlalab.verbalize import GenerationSettings
from nlalab.verbalize.plain import generate_texts


def test_padded_batch_equals_one_by_one(fixture_pairs):
    for name in ("qwen2", "gemma3_text", "llama"):
        p = fixture_pairs[name]
        tg = load_target(p.target, p.layer, truncate=False)
        tok = tg.tokenizer
        prompts = chat_prompt_ids(tok, ("Hi", "What is the capital of Brazil and why?", "Prove it."))
        eos = av_eos_ids(tok, tg.model)
        for greedy in (True, False):
            gs = GenerationSettings(max_new_tokens=10, greedy=greedy, batch_size=8)
            batched = generate_texts(tg.model, tok, prompts, eos, 2, [5, 6, 7], gs)
            single = generate_texts(tg.model, tok, prompts, eos, 2, [5, 6, 7],
                                    GenerationSettings(max_new_tokens=10, greedy=greedy, batch_size=1))
            assert [r.token_ids for r in batched] == [r.token_ids for r in single], (name, greedy)
        # greedy equals transformers' own generate on the unpadded prompt
        ids = torch.tensor([prompts[1]])
        with torch.no_grad():
            ref = tg.model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=eos,
                                    pad_token_id=tok.pad_token_id or eos[0])[0, ids.shape[1]:].tolist()
        ours = generate_texts(tg.model, tok, prompts[1:2], eos, 1, [0], GenerationSettings(max_new_tokens=10,
                                                                                          greedy=True))[0]
        n = len(ours.token_ids)
        assert ref[:n] == ours.token_ids
