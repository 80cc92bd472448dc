"""One driver per sweep: `run` and `resume` hold an exclusive lock on `<sweep>/driver.lock`.

A second `moonsweep resume NAME` while the first driver still runs (another terminal, a
job scheduler retrying) would restore the same Ray experiment beside it: trials run twice
and the reconcile of one deletes the other's runs. The lock is the kernel's (`flock`), so a
driver that is SIGKILLed or loses its machine's process releases it at once, and resume
after a kill never waits. Ray's own processes do not inherit it (Python opens files
non-inheritable).

A killed driver cannot record that it stopped, so its sweep.json still says `running`;
`driver_holds` tells whether a driver is in fact there (`status` then says `interrupted`).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> with driver_lock(folder, "demo"):
    ...     try:
    ...         with driver_lock(folder, "demo"):
    ...             pass
    ...     except ConfigError as exc:
    ...         print(str(exc).split(" (")[0])
    sweep demo is being run by another driver
    >>> driver_holds(folder)  # the driver above has ended
    False
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.config import ConfigError

LOCK_FILE = "driver.lock"


@contextmanager
def driver_lock(folder: Path, name: str) -> Iterator[None]:
    """Hold the sweep's driver lock for the block; ConfigError (exit 2) if another holds it.

    The file keeps who holds it (pid, host, since when) for that message; it stays behind,
    empty of meaning once its holder is gone.
    """
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 (held open for the whole block)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "holder unknown"
            raise ConfigError(
                f"sweep {name} is being run by another driver ({holder}); wait for it to "
                f"end, or stop it (Ctrl-C) and then `moonsweep resume {name}`"
            ) from None
        except OSError:  # a file system without locks (some FUSE mounts): run unguarded
            yield
            return
        handle.seek(0)
        handle.truncate()
        since = time.strftime("%Y-%m-%dT%H:%M:%S")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {since}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing the file releases the lock


def driver_holds(folder: Path) -> bool | None:
    """Whether a driver holds the sweep's lock at this moment; None where the file system
    has no locks (nothing can be told).

    It asks with a shared lock, released at once: a `resume` starting in that very
    instant is refused (exit 2) as if a driver ran, and can simply be run again.
    """
    try:
        handle = open(folder / LOCK_FILE)  # noqa: SIM115 (closed below: that releases it)
    except FileNotFoundError:
        return False  # no driver has ever run it
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        return False
