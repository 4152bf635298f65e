"""The one base class of user errors: input or environment the user must fix.

Every error a user can cause (a bad spec, missing data, a corrupt checkpoint, an unreachable
tracking server...) derives from `UserError`, wherever it is raised: the CLI prints its
message as one line and exits 2, with no traceback (sweeps/cli.py). Anything else that escapes
is a bug and keeps its traceback. It lives in `trainers/`, the bottom layer, because workers
raise user errors too (DataError, CheckpointError) and `trainers` imports nothing above it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user fixes; the message says what is wrong and, where it can, the fix."""
