from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

# Processes of this machine, read from /proc: the pool children of a Celery worker, and the
# processes of a database server, to stop them the way an operator's bad day does.

LOCAL_HOSTS = {"", "127.0.0.1", "localhost", "::1"}
LISTEN = "0A"


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: fields resume after the last ')'
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def children(pid: int) -> list[int]:
    return [child for child in _pids() if _parent(child) == pid]


def descendants(pid: int) -> list[int]:
    by_parent: dict[int | None, list[int]] = {}
    for child in _pids():  # one reading of /proc for the whole tree
        by_parent.setdefault(_parent(child), []).append(child)
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = by_parent.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(inode)
    return inodes


def listening_processes(port: int) -> list[int]:
    sockets = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    found = []
    for pid in _pids():
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in sockets:
                        found.append(pid)
                        break
    return found


def database_server_processes(database_url: str) -> list[int]:
    """Every process of the database server behind database_url when it runs on this machine
    (the listening process and its children: a PostgreSQL server's backends), else []."""
    params = conninfo_to_dict(database_url)
    host = str(params.get("host") or "")
    if host not in LOCAL_HOSTS:
        return []
    listeners = listening_processes(int(params.get("port") or 5432))
    return sorted({pid for top in listeners for pid in (top, *descendants(top))})


@contextlib.contextmanager
def stopped(pids: list[int]) -> Iterator[None]:
    """SIGSTOP the processes; SIGCONT them on the way out, whatever happens meanwhile."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
