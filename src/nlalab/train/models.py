"""Trainable AV and AR built on nlalab's own loaders, plus the token-level pieces every stage needs.

The AR and AV are nlalab's :class:`~nlalab.pairs.load.AR` / :class:`~nlalab.pairs.load.AV` objects
(loaded from release-layout dirs, so the marker, neighbours, templates, scales and layer checks are
exactly the evaluation path's), with gradients switched on (full fine-tune) or LoRA injected into
the same model object. Weights stay fp32 (master weights); CUDA runs use bf16 autocast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from nlalab.errors import NLALabError
from nlalab.pairs import arch
from nlalab.pairs.load import AR, AV, LoadOptions, load_ar, load_av
from nlalab.reconstruct import ar_input_ids, last_real_index
from nlalab.train.common import LoraSettings, apply_lora, autocast, mse_nrm_per_sample
from nlalab.verbalize.inject import injection_hook

RESPONSE_TEMPLATE = "<explanation>\n{explanation}\n</explanation>"


@dataclass
class TrainAR:
    ar: AR
    peft: object = None

    @property
    def model(self) -> nn.Module:
        return self.ar.model

    @property
    def head(self) -> nn.Linear:
        return self.ar.value_head

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.ar.model, "value_head": self.ar.value_head}

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules().values() for p in m.parameters() if p.requires_grad]


@dataclass
class TrainAV:
    av: AV
    close_ids: list[int]
    peft: object = None

    @property
    def model(self) -> nn.Module:
        return self.av.model

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.av.model}

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.av.model.parameters() if p.requires_grad]


def _opts(device: torch.device) -> LoadOptions:
    return LoadOptions(device=str(device), dtype="fp32")


def load_trainable_ar(ar_dir: str | Path, device: torch.device, lora: Optional[LoraSettings] = None) -> TrainAR:
    ar = load_ar(Path(ar_dir), _opts(device))
    peft = None
    if lora is not None and lora.enabled:
        peft = apply_lora(ar.model, lora)  # backbone frozen except the adapters
    else:
        ar.model.requires_grad_(True)
    ar.value_head.requires_grad_(True)
    ar.model.train()
    return TrainAR(ar=ar, peft=peft)


def turn_close_ids(tokenizer, eos_ids: Sequence[int]) -> list[int]:
    """The tokens that close an assistant turn in this chat template, up to and including the first eos.

    Rendered with a sentinel answer, so Qwen/SmolLM2 give ``<|im_end|>``, Gemma ``<end_of_turn>``,
    Llama ``<|eot_id|>`` (kitft's ``generic`` loss mask: response + turn-close ids teach the AV to stop).
    """
    sentinel = "NLALABSENTINELANSWER"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": sentinel}], tokenize=False)
        tail = text.split(sentinel, 1)[1]
    except Exception:  # noqa: BLE001 - templates without an assistant turn
        tail = ""
    ids = [int(i) for i in tokenizer.encode(tail, add_special_tokens=False)] if tail else []
    eos = set(int(e) for e in eos_ids)
    for j, t in enumerate(ids):
        if t in eos:
            return ids[:j + 1]
    if not eos_ids:
        raise NLALabError("The AV tokenizer has no end-of-turn token; cannot teach the AV to stop.")
    return [int(eos_ids[0])]


def load_trainable_av(av_dir: str | Path, device: torch.device, lora: Optional[LoraSettings] = None) -> TrainAV:
    av = load_av(Path(av_dir), _opts(device))
    peft = None
    if lora is not None and lora.enabled:
        peft = apply_lora(av.model, lora)
    else:
        av.model.requires_grad_(True)
    av.model.train()
    return TrainAV(av=av, close_ids=turn_close_ids(av.tokenizer, av.eos_ids), peft=peft)


# ---------------------------------------------------------------------------------------------- AR


def ar_batch(ar: AR, explanations: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded AR inputs (template + BOS via ``add_special_tokens=True``, as ``nlalab.reconstruct``)."""
    ids = ar_input_ids(ar, explanations)
    pad = ar.tokenizer.pad_token_id if ar.tokenizer.pad_token_id is not None else 0
    T = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), T), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), T), dtype=torch.long)
    for r, x in enumerate(ids):
        input_ids[r, :len(x)] = torch.tensor(x)
        mask[r, :len(x)] = 1
    return input_ids, mask


def ar_lengths(ar: AR, explanations: Sequence[str]) -> list[int]:
    return [len(x) for x in ar_input_ids(ar, explanations)]


def ar_predict(ar: AR, explanations: Sequence[str], amp: bool = True) -> torch.Tensor:
    """Value-head output at the last real token [B, d] (fp32), differentiable."""
    input_ids, mask = ar_batch(ar, explanations)
    device = arch.input_device(ar.model)
    input_ids, mask = input_ids.to(device), mask.to(device)
    inner = arch.inner_model(ar.model)
    with autocast(device, amp):
        h = inner(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
    last = last_real_index(mask)
    hl = h[torch.arange(h.shape[0], device=h.device), last]
    return ar.value_head(hl.float())


def ar_loss(ar: AR, explanations: Sequence[str], vectors: torch.Tensor, amp: bool = True) -> torch.Tensor:
    """Per-sample mse_nrm (direction-only MSE; = 2(1 - cos) at s = sqrt(d))."""
    pred = ar_predict(ar, explanations, amp)
    return mse_nrm_per_sample(pred, vectors.to(pred.device), ar.mse_scale)


@torch.no_grad()
def ar_scores(ar: AR, explanations: Sequence[str], vectors: torch.Tensor, batch_size: int = 64,
              amp: bool = True) -> torch.Tensor:
    """mse_nrm per explanation (CPU fp32), in batches sorted by length."""
    out = torch.empty(len(explanations))
    order = sorted(range(len(explanations)), key=lambda i: len(explanations[i]))
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        out[idx] = ar_loss(ar, [explanations[j] for j in idx], vectors[idx], amp).float().cpu()
    return out


# ---------------------------------------------------------------------------------------------- AV


def response_ids(av: AV, explanation: str, close_ids: Sequence[int]) -> list[int]:
    text = RESPONSE_TEMPLATE.format(explanation=explanation)
    return [int(i) for i in av.tokenizer.encode(text, add_special_tokens=False)] + list(close_ids)


def av_sequences(av: AV, responses: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Canonical prompt + response per row, right padded: (input_ids, attention_mask, response_mask)."""
    P = len(av.prompt_ids)
    T = P + max(len(r) for r in responses)
    pad = av.tokenizer.pad_token_id if av.tokenizer.pad_token_id is not None else av.eos_ids[0]
    input_ids = torch.full((len(responses), T), pad, dtype=torch.long)
    attn = torch.zeros((len(responses), T), dtype=torch.long)
    resp = torch.zeros((len(responses), T - P), dtype=torch.float32)
    prompt = torch.tensor(av.prompt_ids, dtype=torch.long)
    for r, ids in enumerate(responses):
        n = len(ids)
        input_ids[r, :P] = prompt
        input_ids[r, P:P + n] = torch.tensor(list(ids), dtype=torch.long)
        attn[r, :P + n] = 1
        resp[r, :n] = 1.0
    return input_ids, attn, resp


def _head_logits(model: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """lm_head in fp32 (outside autocast) + Gemma's final logit soft-capping, as the CausalLM forward does."""
    head = model.get_output_embeddings()
    w = head.weight
    logits = torch.nn.functional.linear(h.to(w.dtype), w, getattr(head, "bias", None)).float()
    cap = getattr(arch.text_config(model.config), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def response_logprobs(model: nn.Module, av: AV, input_ids: torch.Tensor, attn: torch.Tensor,
                      vectors: torch.Tensor, amp: bool = True) -> torch.Tensor:
    """log p(response token) [B, T-P] with the vectors injected at the marker via the embedding hook.

    The decoder runs under autocast (bf16 on CUDA); the LM head runs in fp32 on the response
    positions only, so log-probs (and PPO ratios, KL) do not carry bf16 logit rounding and the
    vocabulary-sized tensor is [B, T-P, V], not [B, T, V].
    """
    P = len(av.prompt_ids)
    device = arch.input_device(model)
    input_ids, attn = input_ids.to(device), attn.to(device)
    t = av.sidecar.tokens
    inner = arch.inner_model(model)
    with injection_hook(model, vectors.to(device), av.injection_scale, t.injection_token_id,
                        t.injection_left_neighbor_id, t.injection_right_neighbor_id), autocast(device, amp):
        h = inner(input_ids=input_ids, attention_mask=attn, use_cache=False).last_hidden_state
    logits = _head_logits(model, h[:, P - 1:-1])
    targets = input_ids[:, P:]
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - lse


def sft_ce(tav: TrainAV, explanations: Sequence[str], vectors: torch.Tensor, amp: bool = True,
           max_response_tokens: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token NLL, number of response tokens) for a micro-batch."""
    resps = [response_ids(tav.av, e, tav.close_ids) for e in explanations]
    if max_response_tokens:
        resps = [r[:max_response_tokens] for r in resps]
    input_ids, attn, mask = av_sequences(tav.av, resps)
    logp = response_logprobs(tav.model, tav.av, input_ids, attn, vectors, amp)
    mask = mask.to(logp.device)
    return -(logp * mask).sum(), mask.sum()
