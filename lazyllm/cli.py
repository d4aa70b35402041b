"""The `lazyllm` command: a side-by-side demo, generation on a local model of a supported family, calibration, info.

    lazyllm demo [--length 4000] [--schedule default] [--max-new-tokens 32]
    lazyllm generate --model PATH_OR_NAME --prompt-file FILE [--schedule S | --config FILE] [--max-new-tokens N]
    lazyllm calibrate --model PATH_OR_NAME --prompts FILE.jsonl [--min-agreement 0.9 | --speedup 2.5] --out FILE
    lazyllm info

The benchmark rig is not part of the library: from a clone, `pip install -e benchmarks` and `python -m lazybench`.
This module is the parser and the entry point; what each command does is `lazyllm.commands`.

Bad input (a missing file, a model that cannot be loaded or patched, a bad schedule) prints one line
`lazyllm: error: ...` on stderr and exits with status 2. Set `LAZYLLM_DEBUG=1` to get the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from lazyllm.commands import PROG, cmd_calibrate, cmd_demo, cmd_generate, cmd_info
from lazyllm.config import DEFAULT_MIN_PROMPT_TOKENS
from lazyllm.errors import LazyLLMError
from lazyllm.models import model_names

EXIT_USAGE = 2
DTYPES = ("auto", "float32", "bfloat16", "float16")
EPILOG = (
    "Run `lazyllm COMMAND --help` for a command's options. LAZYLLM_DEBUG=1 shows tracebacks. The benchmark rig is "
    "not part of the library: from a clone of the repository, `pip install -e benchmarks` and `python -m lazybench`."
)


def _names() -> str:
    """The model names --model accepts, quoted: 'smollm2', 'gemma3', ..."""
    return ", ".join(repr(name) for name in model_names())


def _add_model_options(parser: argparse.ArgumentParser, model: str | None = None, schedule: bool = True) -> None:
    """Options of the commands that load a model: --model (required unless `model` is its default), loading
    options and, with `schedule`, --schedule / --config."""
    choices = f"{_names()}, a .gguf file or a local HF directory"
    if model is None:
        parser.add_argument("--model", required=True, metavar="PATH_OR_NAME", help=choices)
    else:
        parser.add_argument("--model", default=model, help=f"{choices} (default: %(default)s)")
    if schedule:
        _add_schedule_options(parser)
    _add_loading_options(parser)


def _add_schedule_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--schedule",
        default=None,
        help="a preset (off, default, balanced, aggressive) or 'layer:keep,...' such as '8:0.5,16:0.3,24:0.1' "
        "(default: what lazyllm.patch(model) places on the model, by its size)",
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
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {lazyllm.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo(commands)
    _add_generate(commands)
    _add_calibrate(commands)
    info = commands.add_parser("info", help="versions, presets, supported families, model cache")
    info.set_defaults(handler=cmd_info)
    return parser


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    _add_model_options(demo, model="smollm2")
    demo.set_defaults(handler=cmd_demo)


def _add_generate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    generate = commands.add_parser(
        "generate",
        help="patch a local model (Llama, Mistral, Qwen2/3, Gemma 3), answer a prompt file, print the stats",
        description=f"Greedy generation with a patched model from local files only: {_names()}, a .gguf file, or a "
        "directory written by save_pretrained (with its tokenizer). Supported: Llama, Mistral, Qwen2, Qwen3, Gemma 3.",
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


def _add_calibrate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    calibrate = commands.add_parser(
        "calibrate",
        help="find the fastest schedule that keeps a model's answers on your own prompts (no labels)",
        description="Answer your prompts with the unpruned model, then search schedules (cut depths, keep shares) "
        "for the fastest one whose whole greedy answers agree with the unpruned ones so often that the 95% lower "
        "bound of the agreement reaches --min-agreement (or the most faithful one at --speedup). Saves the config "
        "for --config.",
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


def _error(message: str) -> int:
    line = " ".join(str(message).split()) or "unknown error"
    print(f"{PROG}: error: {line}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def _quiet_transformers(verbose: bool) -> int | None:
    """Keep Transformers' generation warnings (sampling flags of the checkpoint's config, ...) out of the output.

    Returns the previous verbosity to restore, or None when nothing was changed.
    """
    if verbose:
        return None
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    return previous


def _dispatch(argv: list[str]) -> int:
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

    try:
        return _dispatch(argv)
    except LazyLLMError as error:  # every error of lazyllm, the commands' own CLIError included
        return _error(str(error) or type(error).__name__)
    except (OSError, ValueError) as error:  # not lazyllm's: a checkpoint Transformers cannot load, an unwritable --out
        if isinstance(error, OSError) and error.filename and str(error.filename) not in str(error):
            return _error(f"{error} ({error.filename})")
        return _error(str(error) or type(error).__name__)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
