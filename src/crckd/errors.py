"""User-facing errors: anything the user can fix (config, data, paths).

The CLI turns these into a one-line message and exit code 2, before any training starts.
"""


class CrckdError(Exception):
    """Base class for errors caused by the user's input rather than by a bug."""


class ConfigError(CrckdError):
    """An unknown key, a wrong type or an impossible value in a config."""


class DataError(CrckdError):
    """A dataset folder, CSV, image or split that cannot be used as given."""


class CheckpointError(CrckdError):
    """A checkpoint that is missing, incompatible or unsafe to load."""


class RunFolderError(CrckdError):
    """An output folder that holds another run, or cannot be written."""


class NumericalError(CrckdError):
    """A loss term became NaN or infinite; the last good checkpoint is kept."""


class DistributedError(CrckdError):
    """Another process of a distributed job stopped, or stopped answering within the timeout."""
