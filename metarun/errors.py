"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


class MetarunError(Exception):
    """A problem with the user's config, data or environment, explained in one line.

    The message names what is wrong and how to fix it. Internal bugs raise ordinary exceptions
    so that they keep their traceback.
    """
