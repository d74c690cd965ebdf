"""One exception type for every mistake a user can fix (bad path, unknown category, wrong checkpoint...).

Entry points catch it and print one line on stderr with exit code 2 (see utils.cli.run_main),
so users never see a traceback for their own input errors.
"""


class UserError(Exception):
    """A problem with the user's input; the message is one line that names the fix."""
