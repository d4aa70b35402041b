"""Named time ranges of the pruned forward, for the decode breakdown (the rig's `lazybench.decode`); off by default.

The forward wraps its parts in `span("mask")`, `span("layers")`, ...; unless a benchmark installs a recorder with
`recording(...)`, `span` returns one shared do-nothing context manager, so the ranges cost a function call each.
The recorder is a context variable: `recording` times only the forward calls of its own thread (or asyncio task),
never those another thread runs meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar

Recorder = Callable[[str], AbstractContextManager[None]]

_NOTHING = nullcontext()
_recorder: ContextVar[Recorder | None] = ContextVar("lazyllm_span_recorder", default=None)


def span(name: str) -> AbstractContextManager[None]:
    """The range `name` of the forward: timed by the recorder installed in this context, nothing otherwise."""
    recorder = _recorder.get()
    return _NOTHING if recorder is None else recorder(name)


@contextmanager
def recording(recorder: Recorder) -> Iterator[None]:
    """Time the forward's ranges with `recorder` (called with a range's name, returns its context manager), in the
    current thread or task only."""
    token = _recorder.set(recorder)
    try:
        yield
    finally:
        _recorder.reset(token)
