"""The one exception type for errors a user can cause and fix (bad path, missing column, empty text...)."""


class Causal2VecError(ValueError):
    """Raised with a message that says what to change."""
