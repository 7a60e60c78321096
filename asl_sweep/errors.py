"""One exception type for problems the user can fix: the CLI prints it as one line."""


class UserError(Exception):
    """Bad input (config, data, sweep file, id): shown as one clear line, exit code 2."""
