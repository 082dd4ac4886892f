"""The one error type users see, and the one way a command reports it.

Every problem a user can fix is a `PipelineError` whose message starts with the field or file concerned:
`error: <field or file>: <what is wrong>` on stderr and exit status 2 (`exit_on_error`). The subclasses
only say which stage refused; callers that do not care catch PipelineError.
"""

import sys
from contextlib import contextmanager


class PipelineError(Exception):
    """A problem the user can fix; the message starts with the field or file concerned."""

    exit_code = 2
    prefix = "error: "


class ConfigError(PipelineError, ValueError):
    """An invalid option value or preset."""


class DataError(PipelineError, ValueError):
    """The data source cannot give what the configuration asks for."""


class CheckpointError(PipelineError):
    """A checkpoint that cannot be written or resumed from."""


class SampleError(PipelineError, ValueError):
    """A sampling request or model folder that cannot be sampled."""


class EvalError(PipelineError, ValueError):
    """An evaluation that cannot run: weights, reference statistics, samples."""


class HubError(PipelineError, RuntimeError):
    """A model card or an upload that cannot be made."""


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
