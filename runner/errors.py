"""Errors a user can fix, printed as one line, and the exit codes they map to."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_INTERRUPTED = 130


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
