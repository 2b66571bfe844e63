"""Exceptions users see. Each message names what is wrong (a key, a file, a row, a field)."""


class MtlRayError(Exception):
    """Base class: the CLI prints these without a traceback."""


class ConfigError(MtlRayError, ValueError):
    """A config key is unknown, has the wrong type or an invalid value."""


class DataError(MtlRayError, ValueError):
    """Input data is missing, unreadable or malformed (message names file, row, field)."""


class AssetError(MtlRayError):
    """A pinned asset could not be fetched or failed its sha256 check."""


class CheckpointError(MtlRayError):
    """A checkpoint is missing, truncated, tampered with, or does not match the run."""


class StorageError(MtlRayError):
    """A run's storage path or URI is not reachable or not writable (message names the path)."""
