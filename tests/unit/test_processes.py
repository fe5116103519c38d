from __future__ import annotations

import os
import signal
import subprocess
import time

from tests.processes import children, descendants

# descendants() picks the processes the frozen-database fault case stops: every level below the
# server's listening process, not only its children.


def test_descendants_reaches_every_level_of_a_process_tree() -> None:
    # a child and a subshell; the subshell has two children of its own
    root = subprocess.Popen(
        ["bash", "-c", "sleep 60 & (sleep 60 & sleep 60 & wait) & wait"], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 20
        while len(found := descendants(root.pid)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(found) == 4, found
        kids = children(root.pid)
        assert len(kids) == 2 and set(kids) < set(found)
        assert root.pid not in found
    finally:
        os.killpg(root.pid, signal.SIGKILL)
        root.wait()
