"""Errors of the processing stages.

Every stage failure is a `StageError` with a short machine-readable `reason` (it ends up
in the dead-letter record), a human message, the stage name, and a `retriable` flag:
True means the same input may succeed later (resource exhaustion), False means the
input itself is bad and retrying is pointless. The original exception, if any, is kept
as `__cause__` (raise ... from exc) and on `.cause`.
"""

from __future__ import annotations


class StageError(Exception):
    """A record a stage could not process."""

    stage: str = "stage"

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        retriable: bool = False,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retriable = retriable
        if cause is not None:
            self.__cause__ = cause

    @property
    def cause(self) -> BaseException | None:
        return self.__cause__

    def __str__(self) -> str:
        return f"[{self.reason}] {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(reason={self.reason!r}, message={self.message!r}, "
            f"retriable={self.retriable})"
        )


class DecodeError(StageError):
    """Image bytes that cannot become a model input.

    Reasons: empty, too-large, not-an-image, truncated, corrupt, decompression-bomb,
    unsupported-mode.
    """

    stage = "decode"


class InferError(StageError):
    """A model input the model could not score.

    Reasons: wrong-shape, model-error, non-finite, out-of-memory.
    """

    stage = "infer"


class PostprocessError(StageError):
    """Logits that cannot become a prediction. Reasons: wrong-shape, non-finite."""

    stage = "postprocess"


class ModelLoadError(Exception):
    """The configured model cannot be loaded (a deployment error, not a record error)."""
