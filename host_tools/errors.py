# Errors a user can cause: the CLI turns these into one line on stderr and exit code 2.


class UserError(Exception):
    """A mistake in what the user gave us (a file, a flag, a port), not a bug."""

    exit_code = 2
