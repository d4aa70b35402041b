"""Shared fixtures: tiny random Llama-family models (fast) and the real SmolLM2 model with real long text.

The tiny models' builders live in `tiny.py` (the rig's tests, benchmarks/tests, import them too); they are imported
here so that `from conftest import tiny_llama` keeps working.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest
import torch
from tiny import SMALL_DIMS, TINY_SHAPES, random_ids, tiny_llama

# OMP_NUM_THREADS where it is set; else the two cores of CI's machines shared among pytest-xdist's workers (`-n 2`:
# one thread each). Threads beyond the cores wait on each other for a whole time slice per small matrix product.
_omp_threads = os.environ.get("OMP_NUM_THREADS", "")
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(int(_omp_threads) if _omp_threads.isdigit() and int(_omp_threads) > 0 else max(1, 2 // _workers))

__all__ = ["SMALL_DIMS", "TINY_SHAPES", "missing", "need", "random_ids", "tiny_llama"]

REAL_MODEL_FILES = ("test_models.py",)  # the packaged SmolLM2 throughout (the marker is declared in pyproject.toml)
# CI sets LAZYLLM_REQUIRE_DATA=1: a missing data package or optional dependency then fails the test, so that a
# broken install cannot pass as a run of skips.
REQUIRE_DATA = os.environ.get("LAZYLLM_REQUIRE_DATA") == "1"


def missing(reason: str) -> NoReturn:
    """Skip: something the test needs is not installed (a failure under LAZYLLM_REQUIRE_DATA=1)."""
    if REQUIRE_DATA:
        pytest.fail(f"{reason} (LAZYLLM_REQUIRE_DATA=1 turns this skip into a failure)")
    pytest.skip(reason)


def need(module: str) -> ModuleType:
    """Import `module`, or skip the test where it is not installed (a failure under LAZYLLM_REQUIRE_DATA=1)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing(f"needs {module}: {error}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that load the real model, so that `-m "not real_model"` runs the tiny-model suite."""
    for item in items:
        if (
            item.path.name in REAL_MODEL_FILES
            or "smollm2" in item.name
            or "smollm2" in getattr(item, "fixturenames", ())
        ):
            item.add_marker(pytest.mark.real_model)


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the real SmolLM2-135M-Instruct, converted once and cached."""
    from lazyllm.models import load_smollm2

    return load_smollm2(progress=False)


@pytest.fixture(scope="session")
def long_prompt_ids(smollm2):
    """A >= 2,000-token chat prompt over real text (SQuAD paragraph among essays) and its expected answer."""
    from lazyllm.documents import long_document_question
    from lazyllm.generation import chat_prompt

    _, tokenizer = smollm2
    text, answer = long_document_question(tokenizer, length=2100)
    ids = tokenizer(chat_prompt(tokenizer, text), return_tensors="pt").input_ids
    assert ids.shape[1] >= 2000
    return ids, answer


@pytest.fixture(scope="session")
def long_prompt_logits(smollm2, long_prompt_ids):
    """`(1, vocab)` the unpatched SmolLM2's next-token logits on `long_prompt_ids` (one 2,000-token prefill, shared
    by the tests that compare a patched SmolLM2 with it)."""
    import lazyllm

    model, _ = smollm2
    ids, _ = long_prompt_ids
    assert not lazyllm.is_patched(model)
    with torch.inference_mode():
        return model(ids, logits_to_keep=1).logits[:, -1]
