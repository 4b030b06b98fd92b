"""The exit codes of every gpu-runner command and process (STYLE.md), in one place. Here, in the layer every other
imports from (control side -> host side -> trainer), so the CLI, the host's commands and the trainer share them."""

EXIT_OK = 0
EXIT_FAILED = 1  # the run failed
EXIT_USAGE = 2  # bad input: one line naming the key and the fix
EXIT_REFUSED = 3  # a preflight check said no before anything changed
EXIT_INTERRUPTED = 130  # Ctrl-C or a stop; restores still ran
