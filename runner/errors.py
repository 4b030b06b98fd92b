"""Errors a user can fix, printed as one line, and the exit codes they map to."""

from runner.train.exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED, EXIT_USAGE

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_REFUSED", "EXIT_USAGE"]


class RunnerError(Exception):
    """Something the user can fix; printed as one line."""

    exit_code = EXIT_FAILED


class UsageError(RunnerError):
    """Bad input: a job file, an override, an inventory or a flag."""

    exit_code = EXIT_USAGE


class Refused(RunnerError):
    """A preflight check said no before anything changed."""

    exit_code = EXIT_REFUSED


class Interrupted(RunnerError):
    """Ctrl-C: the run was cancelled; restores still ran."""

    exit_code = EXIT_INTERRUPTED
