"""The one exception type the local cluster code raises for problems a user can fix."""

from __future__ import annotations


class InfraError(RuntimeError):
    """A failure with a one-line, human-readable message (first line of ``str()``).

    ``detail`` (for example the tail of a node's log) is printed after that line.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.message}\n{self.detail}" if self.detail else self.message
