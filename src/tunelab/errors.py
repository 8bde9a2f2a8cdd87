"""The one base of every error a user can fix by changing what they gave (config, data, model name, run).

The command line prints such an error's message and exits with status 2; anything else is a bug and keeps its
traceback. Kept free of imports so that catching it costs nothing.
"""


class TunelabError(Exception):
    """A problem with the user's input or environment; the message says what is wrong and what to do instead."""
