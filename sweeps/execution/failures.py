"""What a failure in a Ray task or worker group was: its root cause, and whether it is the user's.

One place for both ways work fails on Ray (a Ray task raises `RayTaskError` around the worker's
exception; a Ray Train worker group re-raises it only as text), used by `rewarm train` and by
the base-reference measurement.
"""

from __future__ import annotations

from trainers import ray_compat
from trainers.errors import UserError

# User errors workers raise (trainers/); Ray Train re-raises them as text, so they are told by name.
USER_ERRORS_IN_WORKERS = ("CheckpointError", "DataError", "TaskError", "ModelError")


class RunFailed(RuntimeError):
    """The run ended without completing (diverged, or its process kept failing); the message says why."""


class RunInputError(RunFailed, UserError):
    """The run failed on bad input found inside a worker (a corrupt checkpoint, unreadable data)."""


def root_cause(exc: BaseException) -> tuple[BaseException, str]:
    """The innermost exception under Ray's wrappers, and its last line as `Type: message`."""
    seen = exc
    while True:
        inner = ray_compat.unwrap_task_error(seen) or seen.__cause__
        if inner is None:
            break
        seen = inner
    text = str(seen).strip().splitlines()
    return seen, f"{type(seen).__name__}: {text[-1] if text else ''}"


def raise_as_run_failure(exc: Exception, what: str):
    """Re-raise a failure on Ray as RunInputError (bad input found in a worker) or RunFailed,
    one line: `<what> failed: <Type>: <message>`."""
    root, cause = root_cause(exc)
    user_error = isinstance(root, UserError) or any(f"{name}: " in cause for name in USER_ERRORS_IN_WORKERS)
    if user_error:  # drop Ray's wrapper and the module path: the cause is the message
        name = next((n for n in USER_ERRORS_IN_WORKERS if f"{n}: " in cause), type(root).__name__)
        raise RunInputError(f"{what} failed: {cause[cause.index(f'{name}: '):]}") from exc
    raise RunFailed(f"{what} failed: {cause}") from exc
