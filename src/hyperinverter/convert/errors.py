"""Errors raised when a checkpoint does not fit the model it is loaded into."""


class CheckpointError(ValueError):
    """A checkpoint is corrupt, of an unknown format, or does not match the model (names the keys)."""
