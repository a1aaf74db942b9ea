"""The exception types the CLI turns into one-line messages and exit code 2."""


class YoloPruneError(Exception):
    """Base class: an error the user can fix (bad file, bad value). The message names the file or value."""


class CheckpointError(YoloPruneError):
    """A checkpoint is missing, unreadable, or not an Ultralytics detection model."""


class ConfigError(YoloPruneError):
    """An impossible setting: a ratio out of range, an unknown method, an output path equal to the input."""


class DataError(YoloPruneError):
    """A data yaml, label file or image is missing or malformed."""


class UnsupportedModelError(YoloPruneError):
    """The graph cannot prove that pruning this model is safe."""
