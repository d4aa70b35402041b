"""The QA tasks (RULER ``qa_1``: SQuAD 2.0; ``qa_2``: HotpotQA): a question whose gold paragraph(s) sit among
distractor paragraphs, the hard ones (same article, the question's own) first, then random others."""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Iterator, Sequence
from typing import Any

from lazybench.sample import Sample, sample_rng
from lazyllm.documents import QA_TEMPLATE, QAData, Question, fit, qa_prompt, read_json, squad, unique

_QA_ANSWER_PREFIX = " Answer:"
_MAX_DISTRACTOR_WORDS = 200  # longer QA paragraphs are not used as distractors


@functools.lru_cache(maxsize=1)
def hotpot() -> QAData:
    """HotpotQA distractor dev, parsed like RULER's ``read_hotpotqa``.

    RULER treats all ten paragraphs of a question as its context; here the
    two supporting paragraphs are the gold block and the other (up to eight)
    are its first distractors.  Yes/no questions (458 of 7405) are skipped:
    a substring match on "yes"/"no" is meaningless.
    """
    data = read_json("hotpotqa.json")

    def fmt(title: str, sentences: list[str]) -> str:
        return f"{title}\n{''.join(sentences)}"

    docs = tuple(sorted({fmt(t, s) for d in data for t, s in d["context"]}))
    doc_id = {c: i for i, c in enumerate(docs)}
    questions = []
    for d in data:
        answers = unique([d["answer"]])
        if not answers or answers[0].lower() in ("yes", "no"):
            continue
        support = {title for title, _ in d["supporting_facts"]}
        ids = [(doc_id[fmt(t, s)], t in support) for t, s in d["context"]]
        gold = tuple(dict.fromkeys(i for i, is_gold in ids if is_gold))
        related = tuple(dict.fromkeys(i for i, is_gold in ids if not is_gold and i not in gold))
        if gold:
            questions.append(Question(d["question"].strip(), answers, gold, related))
    return QAData(docs, tuple(questions))


def _truncate_words(text: str, n_words: int) -> str:
    """The first ``n_words`` whitespace-separated words of ``text`` (original spacing kept)."""
    if n_words <= 0:
        return ""
    for i, match in enumerate(re.finditer(r"\S+", text)):
        if i == n_words - 1:
            return text[: match.end()]
    return text


def _distractor_stream(data: QAData, question: Question, rng: random.Random) -> Iterator[str]:
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


def qa_sample(
    task: str, tokenizer: Any, length: int, depth: float, rng: random.Random, index: int, seed: int
) -> Sample:
    data = squad() if task == "qa_squad" else hotpot()
    order = list(range(len(data.questions)))
    sample_rng(task, seed, "questions").shuffle(order)
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
        return qa_prompt(documents, question.query)

    prompt = fit(build, tokenizer, length, n_max, _QA_ANSWER_PREFIX)
    return Sample(task, length, depth, prompt, question.answers, "part", _QA_ANSWER_PREFIX, tuple(gold))


def qa_follow_up(sample: Sample, rng: random.Random) -> Sample:
    """A second question on a ``qa_squad`` / ``qa_hotpot`` sample's document (for two-question conversations):
    another question of the same data set, drawn by ``rng``, whose gold paragraph(s) all stand whole in the document
    (the first question's own or its distractors). The sample is not changed; the new one's ``prompt`` is RULER's
    instruction and the question, without the documents, and its ``depth`` the first gold paragraph's character
    fraction of the document."""
    data = squad() if sample.task == "qa_squad" else hotpot()
    asked = sample.prompt.rsplit("Question: ", 1)[-1]
    present: dict[int, bool] = {}

    def whole(i: int) -> bool:
        if i not in present:
            present[i] = data.docs[i] in sample.prompt
        return present[i]

    candidates = [q for q in data.questions if q.query != asked and all(whole(i) for i in q.gold)]
    if not candidates:
        raise ValueError(f"no other {sample.task} question has its gold paragraphs in this document")
    question = rng.choice(candidates)
    text = QA_TEMPLATE.split("{context}\n\n", 1)[1].format(query=question.query)
    depth = round(sample.prompt.index(data.docs[question.gold[0]]) / len(sample.prompt), 4)
    evidence = tuple(data.docs[i] for i in question.gold)
    return Sample(sample.task, sample.length, depth, text, question.answers, "part", _QA_ANSWER_PREFIX, evidence)
