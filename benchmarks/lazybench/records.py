"""Results as data: the JSON-lines records a run appends, and reading them back by run.

Every line is one JSON object with a `kind` and, for the rig's own records, the `run` it belongs to:

- `run`: what was run and where: profile, command, seed, machine and versions, model, schedules (first line)
- `speed`: one (length, schedule) of section 1, with the raw per-round times
- `accuracy`: one (sample, schedule) of sections 2-3
- `kvpress`: section 4's status (ok, skipped, unavailable, failed) and its settings; `kvpress_row`: one (sample, press)
- `run_end`: elapsed time, load after, what the budget dropped (last line; a run without it was interrupted)
- `fidelity`: the frontier's records (`lazybench.frontier`), read by `lazybench.choose`

Files of several runs and machines (say a CPU and a GPU) can be concatenated or passed together.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Record = dict[str, Any]
RIG_KINDS = ("run", "speed", "accuracy", "kvpress", "kvpress_row", "run_end")


def clean(value: Any) -> Any:
    """JSON-ready copy: NaN / inf become null, tuples become lists, keys become strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


class RunLog:
    """Appends the records of one run to a JSON-lines file, each tagged with the run's id."""

    def __init__(self, path: Path, profile: str) -> None:
        self.path = path
        stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        self.run = f"{stamp}-{profile}-{secrets.token_hex(3)}"
        path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, kind: str, record: Record) -> None:
        line = json.dumps(clean({"kind": kind, "run": self.run, **record}), allow_nan=False, default=str)
        with self.path.open("a") as handle:
            handle.write(line + "\n")

    def add_all(self, kind: str, records: Iterable[Record]) -> None:
        for record in records:
            self.add(kind, record)


def read(paths: Iterable[Path]) -> list[Record]:
    """Every record of the given JSON-lines files, in order; a clear error names a file or line that is not."""
    records = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no results file {path}")
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not a JSON line ({error})") from None
            if not isinstance(record, dict) or "kind" not in record:
                raise ValueError(f"{path}:{number} is not a benchmark record (no 'kind')")
            records.append(record)
    return records


@dataclass
class Run:
    """The records of one rig run, by kind."""

    header: Record
    end: Record | None = None
    speed: list[Record] = field(default_factory=list)
    accuracy: list[Record] = field(default_factory=list)
    kvpress: Record | None = None
    kvpress_rows: list[Record] = field(default_factory=list)


def runs(records: Iterable[Record]) -> list[Run]:
    """The rig's runs among `records`, in order of their `run` record; records of unknown runs are an error."""
    by_id: dict[str, Run] = {}
    for r in records:
        if r["kind"] == "run":
            by_id[r["run"]] = Run(header=r)
        elif r["kind"] in RIG_KINDS:
            if r["run"] not in by_id:
                raise ValueError(f"a {r['kind']!r} record of run {r['run']!r} comes before (or without) its 'run' line")
            run = by_id[r["run"]]
            if r["kind"] == "run_end":
                run.end = r
            elif r["kind"] == "kvpress":
                run.kvpress = r
            else:
                {"speed": run.speed, "accuracy": run.accuracy, "kvpress_row": run.kvpress_rows}[r["kind"]].append(r)
    return list(by_id.values())
