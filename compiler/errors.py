"""The one exception type that means "the user gave us bad input"."""


class DagcError(Exception):
    """A problem with the user's input: the CLI prints it as one line and exits 2."""

    def __init__(self, message: str, path: object = None):
        self.path = path
        super().__init__(f"{path}: {message}" if path is not None else message)
