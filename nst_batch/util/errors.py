"""The one exception family: each carries a message written for the person who caused it.

The CLI prints such an error as one line and exits with status 2; anything else is a bug
and may show a traceback.
"""

import errno


class NstBatchError(Exception):
    """A problem the user can fix; str(error) says what was wrong and how to fix it."""


class ConfigError(NstBatchError):
    """A config file, sidecar or --set value is invalid."""


class InputError(NstBatchError):
    """An input image or path cannot be used."""


class WeightsError(NstBatchError):
    """Network weights are missing, unreadable or of the wrong layout."""


class DeviceError(NstBatchError):
    """The requested device does not exist here."""


class DivergedError(NstBatchError):
    """The optimization blew up (a NaN or infinite loss)."""


def disk_full(error: BaseException) -> bool:
    """A write refused for want of space (ENOSPC) or quota (EDQUOT): nobody's input's fault,
    and worth trying again once there is space."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
