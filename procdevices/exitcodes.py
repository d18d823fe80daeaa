"""Exit codes of ``python -m procdevices``: a protocol for outer supervisors and scripts."""

EXIT_OK = 0  # clean stop; command succeeded
EXIT_FAILED = 1  # the command could not be carried out (the message says why)
EXIT_USAGE = 2  # bad command line (argparse)
EXIT_FATAL = 3  # a device is FATAL (status), or was FATAL when the supervisor stopped (up)
EXIT_NOT_RUNNING = 4  # no supervisor answers on the run directory, or another one holds it
EXIT_UNREACHABLE = 5  # status --all: a host did not answer within --timeout
EXIT_CONFIG = 78  # the configuration is invalid (sysexits EX_CONFIG); nothing was started


class CommandFailed(Exception):
    """Ends a command with an exit code; the reason has been printed already."""

    def __init__(self, code: int) -> None:
        self.code = code
