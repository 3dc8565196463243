"""The one exception the command line turns into a one-line error."""


class AutograderError(Exception):
    """A problem the user can fix: bad input, a missing file, a refused request.

    The message is one line that names the file (or key) and what is wrong; the command line
    prints it as ``autograder: error: <message>`` and exits with status 2, never a traceback.
    """
