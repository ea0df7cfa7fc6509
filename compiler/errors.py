"""The one exception type that means "the user gave us bad input"."""

from __future__ import annotations


def location(path: object, line: int | str | None = None) -> str:
    """`path:12` for a line of a text file; `path (sheet 'male chemical', row 9)` otherwise."""
    if line is None:
        return str(path)
    if isinstance(line, int):
        return f"{path}:{line}"
    return f"{path} ({line})"


class DagcError(Exception):
    """A problem with the user's input: the CLI prints it as one line and exits 2.

    `path` is the file that holds the problem and `line` where in it (a line number of a text
    file, or words such as "sheet 'male chemical', row 9" where there are no lines).
    """

    def __init__(
        self, message: str, path: object = None, line: int | str | None = None
    ):
        self.path = path
        self.line = line
        super().__init__(
            f"{location(path, line)}: {message}" if path is not None else message
        )
