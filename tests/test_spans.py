"""`lazyllm.spans`: a recorder times only the ranges of its own thread, and nothing records by default."""

from __future__ import annotations

import threading
from contextlib import contextmanager

from lazyllm.spans import recording, span


def test_recording_sees_only_its_own_thread():
    seen: list[str] = []

    @contextmanager
    def recorder(name):
        seen.append(name)
        yield

    assert span("mask") is span("layers"), "nothing records: one shared do-nothing context manager"
    other = threading.Thread(target=lambda: span("other thread").__enter__())
    with recording(recorder):
        with span("layers"):
            pass
        other.start()
        other.join()
        with recording(lambda name: recorder(f"inner {name}")):
            span("mask").__enter__()
        span("scoring").__enter__()
    span("after").__enter__()
    assert seen == ["layers", "inner mask", "scoring"]
