"""The exception types the CLI turns into one-line messages and exit code 2, and the one check of a ratio."""

import math
import pickle
import zipfile

# What torch.load raises on a file that is not a readable checkpoint (truncated, not a zip, foreign pickles, ...)
UNREADABLE_CHECKPOINT = (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError,
                         AttributeError, ModuleNotFoundError, TypeError, UnicodeDecodeError)


class YoloPruneError(Exception):
    """Base class: an error the user can fix (bad file, bad value). The message names the file or value."""


class CheckpointError(YoloPruneError):
    """A checkpoint is missing, unreadable, or not a detection model yoloprune can prune."""


class ConfigError(YoloPruneError):
    """An impossible setting: a ratio out of range, an unknown method, an output path equal to the input."""


class BudgetError(ConfigError):
    """A GFLOPs or cost target that pruning cannot reach under the config's constraints."""


class DataError(YoloPruneError):
    """A data yaml, label file or image is missing or malformed."""


class UnsupportedModelError(YoloPruneError):
    """The graph cannot prove that pruning this model is safe."""


def check_ratio(value: object, name: str = "ratio") -> float:
    """``value`` as a fraction in [0, 1) (a prune ratio, a sparsity amount), else a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value < 1:
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)
