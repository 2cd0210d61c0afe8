"""Tiny byte-level BPE tokenizers that behave like the Qwen2.5, Gemma-3 and Llama-3 instruct tokenizers.

Why: every NLA bug we care about in tests (double BOS, marker off by one, left padding, Qwen's
default system prompt, Llama's date header) lives in the tokenizer and chat template, not in the
weights. These tokenizers reproduce exactly those behaviours with a vocabulary of ~1k entries,
trained in-process in milliseconds on a fixed built-in text, so fixtures need no network.

The injection marker of each family (Qwen ``㈎``, Gemma ``㈜``, Llama ``㎡``) is an ordinary BPE
vocabulary entry: we append its byte merges after training (lowest priority), so in
``<concept>㈎</concept>`` its neighbours are the ordinary tokens ``>`` and ``</`` as in the real
tokenizers. No other codepoint of U+3200-U+33FF is a single token, so ``choose_marker`` finds
the family's marker.
"""

from __future__ import annotations

import functools
import json
from typing import Literal

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from nlalab.pairs.sidecar import DEFAULT_AR_TEMPLATE, DEFAULT_AV_TEMPLATE

Family = Literal["qwen2", "gemma3", "llama"]
FAMILIES: tuple[str, ...] = ("qwen2", "gemma3", "llama")

MARKERS = {"qwen2": "\u320e", "gemma3": "\u321c", "llama": "\u33a1"}  # ㈎ ㈜ ㎡ (the released markers)
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
LLAMA_DATE_HEADER = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"

VOCAB_SIZE = 1024  # before the marker merges and specials; the text below supports ~900-1000 merges

# Fixed training text. Deterministic by construction: the same strings every time.
_CORPUS: list[str] = [
    DEFAULT_AV_TEMPLATE,
    DEFAULT_AR_TEMPLATE,
    "Summary of the following text: <text>The text is a recipe for bread.</text> <summary>",
    "<explanation>\nThe passage is a formal news report about an election.\n</explanation>",
    "<explanation>\nA Python tutorial; the final token is a colon that opens a function body.\n</explanation>",
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n",
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.",
    "Natural language autoencoders explain an activation vector in words, then reconstruct the vector from "
    "the words. The reconstruction error measures how much of the vector the explanation captured.",
    "In the morning the market opened higher, and by noon the shares of the largest companies had risen "
    "by three percent. Analysts said the rally was driven by strong earnings reports.",
    "She walked along the river, thinking about the letter she had received the day before. The water was "
    "calm and the sky was grey, but she felt that something important was about to change.",
    "The mitochondria is the powerhouse of the cell. Photosynthesis converts light energy into chemical "
    "energy stored in glucose. Water boils at one hundred degrees Celsius at sea level.",
    "def mean(xs):\n    return sum(xs) / len(xs)\n\n\nclass Model:\n    def __init__(self, d):\n"
    "        self.d = d\n\n    def forward(self, x):\n        return x @ self.weight + self.bias\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i, 'is even')\n    else:\n        continue\n",
    "import torch\nx = torch.randn(4, 8)\ny = torch.nn.functional.softmax(x, dim=-1)\nprint(y.sum(-1))\n",
    "<html><body><p>Hello, world!</p><a href=\"https://example.com\">link</a></body></html>",
    "Let x = 3 and y = 4. Then x^2 + y^2 = 25, so the hypotenuse is 5. The integral of 2x dx is x^2 + C.",
    "The derivative of sin(x) is cos(x). If f(x) = e^x then f'(x) = e^x. 1 + 1 = 2; 12 * 12 = 144.",
    "Question: What is the capital of France? Answer: Paris is the capital of France and is known for the "
    "Eiffel Tower, the Louvre museum, and its cafes.",
    "What are you hiding? I am not hiding anything; I am a language model that answers questions.",
    "Please provide an explanation. Here is the vector. The explanation consists of 2-3 text snippets.",
    "Dear customer, thank you for your order. Your package will arrive within five business days.",
    "The committee will meet on Tuesday to discuss the budget, the new hiring policy and the annual report.",
    "Once upon a time there was a small village at the edge of a great forest, where the people told stories.",
    "user: Can you help me write an email to my manager?\nassistant: Of course! Here is a short draft.",
    "Error: file not found. Traceback (most recent call last): File \"main.py\", line 3, in <module>",
    "JSON: {\"name\": \"Alice\", \"age\": 30, \"tags\": [\"a\", \"b\"]} and YAML: key: value",
    "It's a truth universally acknowledged that we'll need more tests; they're cheap and you've seen why.",
]


def _corpus() -> list[str]:
    # Repeat so that pair counts are well separated (stable merges), plus a few plain word lists.
    return _CORPUS * 3


# Pre-tokenizer regexes (Qwen2 splits digits one by one; Llama-3 groups up to three).
_QWEN_PAT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
_LLAMA_PAT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)

_SPECIALS = {
    # Gemma's first four ids are fixed in the real tokenizer (pad 0, eos 1, bos 2, unk 3): trained in first.
    "gemma3": ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
               "<start_of_image>", "<end_of_image>", "<image_soft_token>"],
    # Qwen and Llama specials sit at the end of the vocabulary, as in the real tokenizers.
    "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "llama": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
              "<|eot_id|>", "<|finetune_right_pad_id|>"],
}

# Chat templates: equivalent to the released ones for plain-string, non-tool conversations.
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + QWEN_DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

# Llama-3.1/3.3: the date header is always written; a user system message is appended after it.
LLAMA_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}"
    "{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# Per family: bos, eos (end of turn, used to stop generation), pad, unk, padding side, template,
# and the generation_config eos list (end-of-turn first).
FAMILY_SPEC = {
    "qwen2": dict(bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None, padding_side="right",
                  chat_template=QWEN_CHAT_TEMPLATE, gen_eos=["<|im_end|>", "<|endoftext|>"]),
    "gemma3": dict(bos="<bos>", eos="<end_of_turn>", pad="<pad>", unk="<unk>", padding_side="left",
                   chat_template=GEMMA_CHAT_TEMPLATE, gen_eos=["<end_of_turn>", "<eos>"]),
    "llama": dict(bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>", unk=None,
                  padding_side="left", chat_template=LLAMA_CHAT_TEMPLATE,
                  gen_eos=["<|eot_id|>", "<|end_of_text|>"]),
}


def _check_family(family: str) -> None:
    if family not in FAMILY_SPEC:
        raise ValueError(f"Unknown tokenizer family {family!r}; expected one of {FAMILIES}.")


@functools.lru_cache(maxsize=None)
def _tokenizer_json(family: str) -> str:
    """Train the BPE once per process and return its serialised form (cheap to clone)."""
    _check_family(family)
    pat = _LLAMA_PAT if family == "llama" else _QWEN_PAT
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pat), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    head_specials = _SPECIALS[family] if family == "gemma3" else []
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE + len(head_specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=head_specials,
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)

    # Append the marker's byte merges at the lowest priority: the marker becomes one ordinary token
    # without ever merging with its neighbours.
    spec = json.loads(tok.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    merges: list = spec["model"]["merges"]
    byte_syms = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(
        MARKERS[family]
    )[0][0]
    cur = byte_syms[0]
    for sym in byte_syms[1:]:
        merged = cur + sym
        if merged not in vocab:
            vocab[merged] = max(vocab.values()) + 1
            merges.append([cur, sym])
        cur = merged
    tok = Tokenizer.from_str(json.dumps(spec))
    if family != "gemma3":
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in _SPECIALS[family]])
    bos = FAMILY_SPEC[family]["bos"]
    if bos is None:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
        )
    return tok.to_str()


def make_tokenizer(family: Family):
    """A fresh ``PreTrainedTokenizerFast`` for ``family`` (qwen2, gemma3, llama); see the module doc."""
    from transformers import PreTrainedTokenizerFast

    _check_family(family)
    spec = FAMILY_SPEC[family]
    kwargs = {k: spec[k] for k in ("bos", "eos", "pad", "unk")}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(family)),
        bos_token=kwargs["bos"],
        eos_token=kwargs["eos"],
        pad_token=kwargs["pad"],
        unk_token=kwargs["unk"],
        padding_side=spec["padding_side"],
        chat_template=spec["chat_template"],
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    if family == "qwen2":
        tok.add_bos_token = False
    return tok


def generation_eos_ids(tokenizer, family: Family) -> list[int]:
    """The ids ``generation_config.eos_token_id`` should hold (end-of-turn first)."""
    return [int(tokenizer.convert_tokens_to_ids(t)) for t in FAMILY_SPEC[family]["gen_eos"]]


__all__ = ["FAMILIES", "FAMILY_SPEC", "MARKERS", "QWEN_DEFAULT_SYSTEM", "LLAMA_DATE_HEADER", "make_tokenizer",
           "generation_eos_ids"]
