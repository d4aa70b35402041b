"""The needle-in-a-haystack tasks (RULER ``niah_single_2``, ``niah_multikey_1``, ``niah_multivalue``): needles
``"One of the special magic numbers for {key} is: {value}."`` hidden in Paul Graham essays."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

from lazybench.sample import Sample
from lazyllm.documents import boundary, essay_slice, essay_words, fit, split_sentences

# RULER templates, copied verbatim from long_context_eval/data/synthetic/constants.py and niah.py.
_NIAH_TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. "
    "Make sure to memorize it. I will quiz you about the {type_needle_v} afterwards.\n"
    "{context}\n"
    "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?"
)
_NIAH_ANSWER_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
_NIAH_NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
_NUMBER_NEEDLE = re.compile(r"One of the special magic numbers for (\S+) is: (\d+)\.")  # a needle of one number
# RULER: DEPTHS = np.round(np.linspace(0, 100, num=40)), used for distractor needles.
_DEPTH_GRID: tuple[float, ...] = tuple(round(100 * i / 39) / 100 for i in range(40))
_MULTIKEY_NUM_KEYS = 4  # RULER niah_multikey_1: num_needle_k=4, num_needle_q=1
_MULTIVALUE_NUM_VALUES = 4  # RULER niah_multivalue: num_needle_v=4

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


def insert_at_depths(text: str, inserts: Sequence[tuple[float, str]]) -> str:
    """Insert sentences into ``text`` at sentence boundaries nearest the given depths."""
    sentences = split_sentences(text)
    lengths = [len(s) + 1 for s in sentences]
    by_boundary: dict[int, list[tuple[float, str]]] = {}
    for depth, insert in inserts:
        by_boundary.setdefault(boundary(lengths, depth), []).append((depth, insert))
    parts: list[str] = []
    for b in range(len(sentences) + 1):
        parts.extend(s for _, s in sorted(by_boundary.get(b, [])))
        if b < len(sentences):
            parts.append(sentences[b])
    return " ".join(parts)


def _singular(template: str) -> str:
    """RULER's rewrite for a single queried value (niah.py, generate_input_output)."""
    return template.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")


def niah_sample(task: str, tokenizer: Any, length: int, depth: float, rng: random.Random) -> Sample:
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
    words = essay_words()
    start = essay_slice(rng, length)

    def build(n: int) -> str:
        haystack = " ".join(words[start : start + n])
        context = insert_at_depths(haystack, inserts)
        return template.format(type_needle_v=kind, context=context, query=query)

    prompt = fit(build, tokenizer, length, length, prefix)
    answers = tuple(values[:num_values])
    return Sample(task, length, depth, prompt, answers, "all", prefix, tuple(needles[:num_values]))


def niah_follow_up(sample: Sample, rng: random.Random) -> Sample:
    """A second question on a ``niah_multikey`` sample's document (for two-question conversations): the number of
    another of its needles' keys (one of the first question's distractors, drawn by ``rng``), asked in RULER's
    one-value wording. The sample is not changed; the new one's ``prompt`` is the question alone, its ``depth``
    the needle's character fraction of the document."""
    if sample.task != "niah_multikey":
        raise ValueError(f"a follow-up needs another needle's key: niah_multikey, not {sample.task!r}")
    others = [m for m in _NUMBER_NEEDLE.finditer(sample.prompt) if m.group(0) not in sample.evidence]
    needle = rng.choice(others)
    key, value = needle.groups()
    question = _singular(_NIAH_TEMPLATE).rsplit("\n", 1)[1].format(type_needle_v="number", query=key)
    prefix = _singular(_NIAH_ANSWER_PREFIX).format(type_needle_v="number", query=key)
    depth = round(needle.start() / len(sample.prompt), 4)
    return Sample(sample.task, sample.length, depth, question, (value,), "all", prefix, (needle.group(0),))
