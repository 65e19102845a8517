"""The one error type of the data pipeline: bad input, named with its file and its fix, on one line."""


class DataError(ValueError):
    """A data problem the user can fix (missing files, empty dataset, stale or corrupt shards...).

    The message is one line: what is wrong, which file or setting, and what to do about it.
    """
