"""Errors users can act on, and the exit codes the Job's podFailurePolicy keys on.

Exit codes (documented in docs/runner-io.md, used by the operator's podFailurePolicy):

* 0  success
* 1  internal error (a bug; a retry might help, the pod failure counts)
* 2  bad input: the spec, model or data is wrong; no retry helps (FailJob)
* 75 transient failure (EX_TEMPFAIL): storage/network trouble; a retry may help
* 130 interrupted by Ctrl-C (local runs)
* 143 stopped by SIGTERM (preemption); a checkpoint was written, the retry resumes
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_TRANSIENT = 75
EXIT_TERMINATED = 143


class SparsifyError(Exception):
    """Base class: ``str(err)`` is one line saying what is wrong, where, and how to fix it."""

    exit_code = EXIT_INTERNAL
    reason = "InternalError"

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class InputError(SparsifyError):
    """Bad user input (spec, files, data). Raised before anything is written."""

    exit_code = EXIT_BAD_INPUT
    reason = "InvalidInput"


class TransientError(SparsifyError):
    """Something outside the user's control failed and may succeed on retry."""

    exit_code = EXIT_TRANSIENT
    reason = "TransientFailure"


class Terminated(SparsifyError):
    """The run was asked to stop (SIGTERM) and saved a checkpoint first."""

    exit_code = EXIT_TERMINATED
    reason = "Preempted"
