"""`nst-batch` with every fsync followed by a pause (tests/test_crash.py): the kills of the crash
test then land inside the windows where a temporary file is complete but not yet renamed, and
just after a rename, not only between such steps.

    python tests/paced_daemon.py PAUSE_S serve --config CONFIG
"""

import os
import sys
import time

PAUSE_S = float(sys.argv.pop(1))
_fsync = os.fsync


def paced_fsync(fd: int) -> None:
    _fsync(fd)
    time.sleep(PAUSE_S)


os.fsync = paced_fsync

from nst_batch.cli import main  # noqa: E402  (after the patch: nothing may hold the real fsync)

sys.exit(main())
