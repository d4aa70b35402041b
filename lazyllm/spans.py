"""Named time ranges of the pruned forward, for the decode breakdown (the rig's `lazybench.decode`); off by default.

The forward wraps its parts in `span("mask")`, `span("layers")`, ...; unless a benchmark installs a recorder with
`recording(...)`, `span` returns one shared do-nothing context manager, so the ranges cost a function call each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

Recorder = Callable[[str], AbstractContextManager[None]]

_NOTHING = nullcontext()
_recorder: Recorder | None = None


def span(name: str) -> AbstractContextManager[None]:
    """The range `name` of the forward: timed by the installed recorder, nothing otherwise."""
    return _NOTHING if _recorder is None else _recorder(name)


@contextmanager
def recording(recorder: Recorder) -> Iterator[None]:
    """Time the forward's ranges with `recorder` (called with a range's name, returns its context manager)."""
    global _recorder
    previous, _recorder = _recorder, recorder
    try:
        yield
    finally:
        _recorder = previous
