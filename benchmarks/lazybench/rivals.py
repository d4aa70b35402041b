"""Section 4 of a run: NVIDIA kvpress (SnapKV, StreamingLLM) at LazyLLM's KV budget, on the same token ids.

kvpress pins `transformers<5.3`, so it runs in its own virtualenv (`benchmarks/.kvpress-venv`, created on first use
with this process's exact torch build) through `benchmarks/lazybench/kvpress_runner.py`, which receives the samples as a
JSON file. The other rivals (random drop, static pruning, no revival) are LazyLLM configurations
(`lazybench.profiles.build_configs`) and run in the accuracy section.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lazybench.profiles import BASELINE, Profile, length_label
from lazybench.tasks import score
from lazyllm.fidelity import answers_agree

# benchmarks/lazybench/rivals.py -> benchmarks/.kvpress-venv: beside the rig's package, in the rig's folder.
KVPRESS_VENV = Path(__file__).resolve().parents[1] / ".kvpress-venv"
KVPRESS_VERSION = "0.5.5"
RUNNER = Path(__file__).resolve().parent / "kvpress_runner.py"


class KvpressUnavailable(RuntimeError):
    """kvpress could not be installed or run; the message is reported verbatim."""


def _run(command: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])


def _install(steps: list[list[str]], timeout: float) -> None:
    for step in steps:
        try:
            done = _run(step, timeout)
        except subprocess.TimeoutExpired as error:
            raise KvpressUnavailable(f"`{shlex.join(step)}` timed out after {timeout:.0f} s") from error
        if done.returncode != 0:
            raise KvpressUnavailable(
                f"`{shlex.join(step)}` failed (exit {done.returncode}):\n{_tail(done.stderr or done.stdout)}"
            )


def ensure_kvpress_venv(venv: Path = KVPRESS_VENV, timeout: float = 1800) -> Path:
    """The python of a virtualenv holding kvpress and torch of exactly this process's build, created if needed.

    torch is pinned to `torch.__version__` (e.g. 2.13.0+cpu), so pip takes the local CPU wheel it finds on this
    machine and never pulls a CUDA build; kvpress then brings its own transformers (< 5.3).
    """
    python = venv / "bin" / "python"
    imports = (
        "import kvpress, torch, transformers; print(kvpress.__name__, torch.__version__, transformers.__version__)"
    )
    check = [str(python), "-c", imports]
    if python.exists() and _run(check, 300).returncode == 0:
        return python
    tqdm.write(f"kvpress: creating {venv} (one-off: pip install torch=={torch.__version__} kvpress=={KVPRESS_VERSION})")
    venv.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write(f"torch=={torch.__version__}\n")
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    try:
        _install(
            [
                [sys.executable, "-m", "venv", str(venv)],
                [*pip, f"torch=={torch.__version__}"],
                [*pip, "-c", constraints.name, f"kvpress=={KVPRESS_VERSION}"],
            ],
            timeout,
        )
    finally:
        os.unlink(constraints.name)
    done = _run(check, 300)
    if done.returncode != 0:
        raise KvpressUnavailable(f"kvpress does not import in {venv}:\n{_tail(done.stderr)}")
    return python


def call_runner(python: Path, request: dict[str, Any]) -> dict[str, Any]:
    """The runner's response to `request`, or {"status": "failed", "error": ...}."""
    with tempfile.TemporaryDirectory(prefix="lazyllm-kvpress-") as scratch:
        request_path, response_path = Path(scratch) / "request.json", Path(scratch) / "response.json"
        request_path.write_text(json.dumps(request))
        env = {
            **os.environ,
            "TRANSFORMERS_VERBOSITY": "error",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        env.pop("PYTHONPATH", None)
        try:
            done = _run([str(python), str(RUNNER), str(request_path), str(response_path)], 3600, env)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "error": "the kvpress runner timed out after 3600 s"}
        if not response_path.exists():
            return {"status": "failed", "error": f"runner exit {done.returncode}:\n{_tail(done.stderr)}"}
        return json.loads(response_path.read_text())


def score_rows(
    response: dict[str, Any], chosen: dict[str, dict[str, Any]], records: list[dict[str, Any]], tokenizer: Any
) -> list[dict[str, Any]]:
    """One record per (sample, press): the runner's figures, the decoded answer, its score and agreements."""
    lazy_answers = {(r["id"], r["schedule"]): r["answer"] for r in records}
    references: dict[str, str] = {}
    rows = []
    for item in response["results"]:  # "none" comes first for each sample
        sample = chosen[item["id"]]["sample"]
        answer = tokenizer.decode(item["generated_ids"], skip_special_tokens=True)
        if item["press"] == "none":
            references[item["id"]] = answer
        lazy_baseline = lazy_answers.get((item["id"], BASELINE), "")
        rows.append(
            {
                **item,
                "task": sample.task,
                "length": sample.length,
                "label": length_label(sample.length),
                "answer": answer,
                "score": score(answer, sample),
                "answer_agree": answers_agree(answer, references.get(item["id"], "")),
                "answer_agree_lazyllm_baseline": answers_agree(answer, lazy_baseline),
            }
        )
    return rows


def run_kvpress(
    profile: Profile,
    encoded: dict[str, dict[str, Any]],
    records: list[dict[str, Any]],
    tokenizer: Any,
    budget: float,
    device: str,
    model_dir: Path,
) -> dict[str, Any]:
    """kvpress at KV budget `budget` (share of KV entries kept) on the accuracy samples at the kvpress lengths:
    the status (ok, skipped, unavailable, failed, with the reason or error) and, when ok, one row per (sample, press)."""
    chosen = {i: e for i, e in encoded.items() if e["sample"].length in profile.kvpress_lengths}
    result: dict[str, Any] = {
        "status": "skipped",
        "kv_budget": budget,
        "compression_ratio": round(1.0 - budget, 4),
        "presses": list(profile.kvpress_presses),
        "lengths": list(profile.kvpress_lengths),
    }
    if not chosen:
        return {**result, "reason": "no accuracy sample at the kvpress lengths"}
    try:
        python = ensure_kvpress_venv()
    except KvpressUnavailable as error:
        return {**result, "status": "unavailable", "error": str(error)}
    tqdm.write(f"kvpress: running {len(chosen)} samples x {1 + len(profile.kvpress_presses)} in {python.parent.parent}")
    response = call_runner(
        python,
        {
            "model_dir": str(model_dir),
            "device": device,
            "threads": torch.get_num_threads(),
            "max_new_tokens": profile.max_new_tokens,
            "compression_ratio": result["compression_ratio"],
            "presses": list(profile.kvpress_presses),
            "samples": [{"id": i, "input_ids": e["input_ids"]} for i, e in chosen.items()],
        },
    )
    if response.get("status") != "ok":
        return {**result, "status": "failed", "error": response.get("error"), "traceback": response.get("traceback")}
    rows = score_rows(response, chosen, records, tokenizer)
    return {**result, "status": "ok", "versions": response.get("versions"), "rows": rows}
