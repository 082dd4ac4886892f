"""The one error type users see, and the one way a command reports it.

Every problem a user can fix is a `PipelineError` whose message starts with the field or file concerned:
`error: <field or file>: <what is wrong>` on stderr and exit status 2 (`exit_on_error`), whichever stage refused
(the config, the data, a checkpoint, sampling, evaluation, the Hub). `TrainingStopped` is the stop signal: a run
that stopped on purpose (a signal, divergence) with its own exit status.
"""

import sys
from contextlib import contextmanager


class PipelineError(Exception):
    """A problem the user can fix; the message starts with the field or file concerned."""

    exit_code = 2
    prefix = "error: "


DIVERGED_EXIT = 3  # a run that diverged: stopped, or finished with problems (pipeline/train.py, run_problems)


class TrainingStopped(PipelineError, RuntimeError):
    """The run stopped early on purpose: a signal (checkpointed) or divergence; exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
        self.prefix = "error: " if exit_code == DIVERGED_EXIT else ""  # a signal is not an error


@contextmanager
def exit_on_error():
    """Run a command's body; a PipelineError becomes its message on stderr and the error's exit status."""
    try:
        yield
    except PipelineError as error:
        print(f"{error.prefix}{error}", file=sys.stderr)
        sys.exit(error.exit_code)
