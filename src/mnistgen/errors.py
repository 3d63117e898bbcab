"""The one exception type that means "the user did something we can explain in one line".

The CLI catches :class:`MnistgenError` and prints ``mnistgen: error: <message>`` to stderr with a
non-zero exit; anything else is a bug and keeps its traceback.
"""


class MnistgenError(Exception):
    """A user-facing error: bad input, missing or corrupt file, unreachable data."""


class DataError(MnistgenError):
    """A data file is missing, corrupt, truncated or mislabelled, or no source could provide it."""


class NonFiniteLossError(MnistgenError):
    """A loss or an evaluation became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after a completed step; the state was saved. ``str()`` says how to continue."""


class UsageError(MnistgenError):
    """A flag's value that the command cannot take (out of its bounds): exits 2, as a flag argparse refuses."""
