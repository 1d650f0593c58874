"""Errors that the command line reports as one line and a non-zero exit."""


class TextVAEError(Exception):
    """Base class: a problem with the user's input, reported without a traceback."""


class ConfigError(TextVAEError):
    """A bad config file, key or value."""


class DataError(TextVAEError):
    """A missing, empty, undecodable or malformed corpus."""


class CheckpointError(TextVAEError):
    """A missing, damaged or inconsistent checkpoint folder."""


class InputError(TextVAEError):
    """Bad sentences or arguments given to a command or to the Python API (an empty sentence,
    an unknown label, too few interpolation steps)."""


class OptionError(InputError, ValueError):
    """An option out of its range or set of choices (a decoding strategy, a temperature, a
    count), given on the command line or to a library function."""
