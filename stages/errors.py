"""The one exception type the CLI turns into a clear message and a non-zero exit."""


class StageError(Exception):
    """A problem the user can fix (bad input, bad parameter, missing asset); no traceback."""
