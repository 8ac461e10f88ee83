"""The one exception type users see: the CLI prints its message on one line and exits 2."""


class SplatVLMError(Exception):
    """A clear, expected error (bad input, missing weights, ...). Never wraps a bug.

    ``kind`` names a situation whose advice (which flags to change) the CLI adds: the library's
    messages say what happened, cli.py says what to type next.
    """

    def __init__(self, message: str, kind: str | None = None):
        super().__init__(message)
        self.kind = kind


class StopRun(Exception):
    """Raised inside a run to stop it cleanly with a saved checkpoint (signal, repeated bad steps)."""

    def __init__(self, reason: str, exit_code: int, kind: str | None = None):
        super().__init__(reason)
        self.exit_code = exit_code
        self.kind = kind
