"""lazyllm: LazyLLM dynamic token pruning (Fu et al., 2024) as a drop-in patch for Transformers models.

import lazyllm
lazyllm.patch(model)          # the default schedule for the model's depth; or lazyllm.patch(model, "balanced")
model.generate(**inputs)      # as before, with a sooner first token on long prompts
print(lazyllm.stats(model).summary())

`lazyllm.calibrate` and `lazyllm.Calibration` are imported on first use (`import lazyllm` stays light).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lazyllm.config import PRESETS, LazyConfig
from lazyllm.errors import (
    ConfigError,
    DataNotFoundError,
    LazyLLMError,
    ModelNotFoundError,
    NotPatchedError,
    UnsupportedCacheError,
    UnsupportedCallError,
    UnsupportedGenerationError,
    UnsupportedModelError,
)
from lazyllm.patching import is_patched, patch, patched, stats, unpatch
from lazyllm.stats import LazyStats
from lazyllm.version import __version__ as __version__

__all__ = [
    "PRESETS",
    "Calibration",
    "ConfigError",
    "DataNotFoundError",
    "LazyConfig",
    "LazyLLMError",
    "LazyStats",
    "ModelNotFoundError",
    "NotPatchedError",
    "UnsupportedCacheError",
    "UnsupportedCallError",
    "UnsupportedGenerationError",
    "UnsupportedModelError",
    "calibrate",
    "is_patched",
    "patch",
    "patched",
    "stats",
    "unpatch",
]

if TYPE_CHECKING:
    from lazyllm.calibration import Calibration, calibrate
else:  # at run time, imported on first use (PEP 562): lazyllm.calibration imports the generation and timing helpers

    def __getattr__(name: str) -> object:
        if name in ("Calibration", "calibrate"):
            from lazyllm import calibration

            value = getattr(calibration, name)
            globals()[name] = value
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
