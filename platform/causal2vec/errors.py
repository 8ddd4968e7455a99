"""The one exception type for errors a user can cause and fix (bad path, missing column, empty text...)."""

USAGE_ERROR = 2  # the exit status of every entry point when the input or a flag is wrong (argparse's own, too)


class Causal2VecError(ValueError):
    """Raised with a message that says what to change."""
