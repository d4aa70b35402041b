"""lazyllm: LazyLLM dynamic token pruning (Fu et al., 2024) as a drop-in patch for Transformers models.

import lazyllm
lazyllm.patch(model)          # the default schedule for the model's depth
model.generate(**inputs)      # as before, with a sooner first token on long prompts
print(lazyllm.stats(model).summary())
"""

from lazyllm.cache import UnsupportedCacheError
from lazyllm.calibration import Calibration, calibrate
from lazyllm.calls import UnsupportedCallError, UnsupportedGenerationError
from lazyllm.config import PRESETS, ConfigError, LazyConfig
from lazyllm.families import UnsupportedModelError
from lazyllm.patching import is_patched, patch, patched, stats, unpatch
from lazyllm.stats import LazyStats
from lazyllm.version import __version__ as __version__

__all__ = [
    "PRESETS",
    "Calibration",
    "ConfigError",
    "LazyConfig",
    "LazyStats",
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
