"""The one exception type that reaches users as a one-line message."""


class UserError(Exception):
    """Bad input from the user (a file, an option, a checkpoint).

    The command line prints ``error: <message>`` on one line, exits with status 2 and shows no
    traceback. The message names the file or option and says what is wrong.
    """
