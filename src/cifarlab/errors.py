"""The one exception type that reaches a user as a single line.

Everything a user can fix (a bad path, a bad config value, a missing download, a
checkpoint from another model) raises UserError; the CLI prints its message and
exits 2. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix; str(err) says what is wrong and what to do."""
