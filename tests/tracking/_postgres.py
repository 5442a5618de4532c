"""A throwaway PostgreSQL server for the run store's tests: Debian's server binaries, a temp folder, a Unix socket.

``initdb`` refuses to run as root, and CI runs as root: then every server command runs as the ``postgres`` user
(``runuser -u postgres``) in a folder that user owns. The server listens on no TCP port (``listen_addresses=''``),
only on a socket in its own folder, runs without fsync (a test server), and is stopped (``pg_ctl stop -m
immediate``) and its folder deleted whatever happens. Every command has a timeout.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["find_binaries", "postgres_server", "skip_reason"]

TIMEOUT = 60  # seconds, for each server command


def find_binaries() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``: ``$PG_BIN``, Debian's newest
    ``/usr/lib/postgresql/<version>/bin``, or the ``PATH``'s."""
    candidates = [os.environ.get("PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    on_path = shutil.which("initdb")
    candidates.append(str(Path(on_path).parent) if on_path else "")
    for folder in candidates:
        if folder and all((Path(folder) / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    return None


def _user() -> str | None:
    """The unprivileged user to run the server as when we are root (``None``: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return ""
    return "postgres"


def skip_reason() -> str | None:
    """Why the PostgreSQL tests cannot run here, or ``None``."""
    if find_binaries() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl, postgres) in $PG_BIN, /usr/lib/postgresql/*/bin or PATH"
    if _user() == "":
        return "running as root, and initdb refuses root: no 'postgres' user to run the server as"
    if _user() and shutil.which("runuser") is None:
        return "running as root without runuser to start the server as the 'postgres' user"
    return None


def _run(command: list[str], user: str | None) -> None:
    if user:
        command = ["runuser", "-u", user, "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr or result.stdout}")


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yield the folder of its socket (``host=`` of the URL, user ``postgres``, trust auth)."""
    binaries, user = find_binaries(), _user()
    assert binaries is not None
    root = Path(tempfile.mkdtemp(prefix="tst-pg-"))
    data = root / "data"
    try:
        if user:
            shutil.chown(root, user)
        _run([str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
             user)
        options = f"-k {root} -c listen_addresses='' -F -c max_connections=50"
        _run([str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "-t", "30",
              "start"], user)
        try:
            yield str(root)
        finally:
            _run([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop"], user)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def stop(socket_folder: str) -> None:
    """Stop the server of ``socket_folder`` (to test an unreachable store); :func:`restart` starts it again."""
    binaries = find_binaries()
    assert binaries is not None
    _run([str(binaries / "pg_ctl"), "-D", str(Path(socket_folder) / "data"), "-m", "immediate", "-w", "-t", "30",
          "stop"], _user())


def restart(socket_folder: str) -> None:
    """Start again a server :func:`stop` stopped."""
    binaries = find_binaries()
    assert binaries is not None
    root = Path(socket_folder)
    options = f"-k {root} -c listen_addresses='' -F -c max_connections=50"
    _run([str(binaries / "pg_ctl"), "-D", str(root / "data"), "-o", options, "-l", str(root / "log"), "-w", "-t",
          "30", "start"], _user())
