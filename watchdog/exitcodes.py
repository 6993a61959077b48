"""Every exit code ``watchdogctl`` uses, in one place (Nagios-style for status and check)."""

EXIT_OK = 0
EXIT_FAILURE = 1  # a command that did not do what was asked (daemon refused to start, a replay off its expectation)
EXIT_DEGRADED = 1  # status / check: a warning finding, or a target not observed lately
EXIT_CRITICAL = 2  # status / check: a critical finding
EXIT_USAGE = 2  # a bad config or bad arguments
EXIT_UNREACHABLE = 3  # status: the daemon does not answer
EXIT_INTERRUPTED = 130  # Ctrl-C
