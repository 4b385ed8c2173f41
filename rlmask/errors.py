"""The one exception type that reaches users as a one-line message."""


class UserError(Exception):
    """Bad input from the user (a file, an option, a checkpoint).

    The command line prints ``error: <message>`` on one line, exits with status 2 and shows no
    traceback. The message names the file or option and says what is wrong.
    """


def reason(err: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message for a one-line error, shortened at a word boundary."""
    text = str(err).splitlines()[0].strip() if str(err).strip() else type(err).__name__
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(",;:")
    return cut + " ..."
