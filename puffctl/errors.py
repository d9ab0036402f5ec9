"""The one exception type the CLI turns into a one-line error and an exit code."""


class PuffctlError(Exception):
    """A problem the user can fix: shown as one line, no traceback.

    exit_code 2 means bad input; 1 means the thing asked for failed.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
