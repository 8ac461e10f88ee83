"""The one exception type users see: the CLI prints its message on one line and exits 2."""


class SplatVLMError(Exception):
    """A clear, expected error (bad input, missing weights, ...). Never wraps a bug."""


class StopRun(Exception):
    """Raised inside a run to stop it cleanly with a saved checkpoint (signal, repeated bad steps)."""

    def __init__(self, reason: str, exit_code: int):
        super().__init__(reason)
        self.exit_code = exit_code
