"""`lazyllm.generation`: one encoding of text, chat messages and ids, and one greedy generate()."""

from __future__ import annotations

import pytest
import torch
from conftest import random_ids, tiny_llama

from lazyllm.config import ConfigError
from lazyllm.generation import chat_prompt, encode, greedy, model_inputs, pad_token_id


class Tokenizer:
    """Text is token ids written as numbers; a chat template adds ids 1 (start) and 2 (answer)."""

    chat_template = "yes"

    def __call__(self, text, return_tensors=None, add_special_tokens=True):
        ids = [0] * add_special_tokens + [int(token) for token in text.split()]
        return type("Encoding", (), {"input_ids": torch.tensor([ids])})()

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and not tokenize
        return "1 " + " ".join(m["content"] for m in messages) + " 2"


def test_encode_text_chat_messages_and_ids() -> None:
    tokenizer = Tokenizer()
    assert encode(tokenizer, "5 6").tolist() == [[0, 5, 6]]  # as it is, with the tokenizer's special tokens
    assert encode(tokenizer, "5 6", chat=True).tolist() == [[1, 5, 6, 2]]  # the template writes its own
    assert encode(tokenizer, [{"role": "user", "content": "5 6"}]).tolist() == [[1, 5, 6, 2]]
    assert encode(tokenizer, [7, 8]).tolist() == [[7, 8]]
    assert encode(tokenizer, torch.tensor([7, 8])).tolist() == [[7, 8]]
    assert chat_prompt(tokenizer, "5") == "1 5 2"
    Tokenizer.chat_template = None
    try:
        assert chat_prompt(tokenizer, "5") == "5"
        assert encode(tokenizer, "5", chat=True).tolist() == [[0, 5]]  # no template: the text as it is
    finally:
        Tokenizer.chat_template = "yes"
    with pytest.raises(ConfigError, match="a prompt must be"):
        encode(tokenizer, [1.5])


def test_greedy_is_generate_without_sampling_with_a_pad_token() -> None:
    model = tiny_llama("gqa")
    ids = random_ids(40)
    model.generation_config.pad_token_id = None
    model.generation_config.eos_token_id = [2, 3]
    assert pad_token_id(model) == 2
    with torch.inference_mode():
        expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
    assert torch.equal(greedy(model, ids, max_new_tokens=5), expected)
    inputs = model_inputs(ids)
    assert torch.equal(inputs["attention_mask"], torch.ones_like(ids))
    assert greedy(model, **inputs, max_new_tokens=5, min_new_tokens=5).shape == (1, 45)
