"""The one exception type users see."""


class PipelineError(Exception):
    """A problem the user can fix: the message says what was wrong and what to do.

    Stage scripts catch it, print the message on one line and exit non-zero.
    """
