"""The one exception type a user can cause: the CLI prints it as one line and exits with code 2."""


class UserError(Exception):
    """A mistake the user can fix (bad file, field, key, path). Message: what, where, and the fix."""
