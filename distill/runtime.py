"""Rules every long-running command shares, written once: stopping on a signal at a safe point,
atomic writes, the first line of an error, and the model under its wrappers.

No torch import at module level: DataLoader workers and the labeling job's cheap checks import this.
"""
from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import threading
from contextlib import contextmanager

TMP_SUFFIX = ".tmp"  # a temporary file is PATH.tmp.<owner id> (owner_id)
_owner: tuple[int, str] | None = None


# ------------------------------------------------------------------------------------- signals
class StopSignals:
    """SIGTERM / SIGINT only record that a stop was asked for (the first signal is kept); the owner
    checks ``requested`` at its safe points (the end of a training step, before each labeling batch).
    Raising from the handler itself could land anywhere, a ``__del__`` included, where Python drops
    the exception with a warning. Installed from the main thread only; ``restore`` puts the previous
    handlers back."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, _frame):
        self.signum = self.signum or signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


# ------------------------------------------------------------------------------- atomic writes
def owner_id() -> str:
    """``<host>-<pid>-<random>``, one per process (a forked child gets its own): it names the
    process's temporary files and claims, so another process can tell whose they are and whether
    that owner can still be alive (``pseudolabel.claims``)."""
    global _owner
    if _owner is None or _owner[0] != os.getpid():
        host = re.sub(r"[^A-Za-z0-9_.-]+", "_", socket.gethostname()) or "host"
        _owner = (os.getpid(), f"{host}-{os.getpid()}-{secrets.token_hex(4)}")
    return _owner[1]


def temp_path(path: str) -> str:
    """This process's temporary file for ``path``."""
    return f"{path}{TMP_SUFFIX}.{owner_id()}"


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


@contextmanager
def naming(path: str):
    """A failed write or fsync (ENOSPC, EIO) does not say which file: name it."""
    try:
        yield
    except OSError as err:
        if err.filename is None:
            err.filename = path
        raise


@contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True):
    """Yield this process's temporary name for ``path``; when the block ends without an error it is
    fsynced and renamed onto ``path``, else removed: ``path`` exists complete or not at all."""
    path = os.fspath(path)
    tmp = temp_path(path)
    try:
        yield tmp
        if fsync:
            with naming(tmp), open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write bytes (or UTF-8 text) to ``path`` atomically (``atomic_path``)."""
    with atomic_path(path) as tmp, naming(tmp), open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


# --------------------------------------------------------------------------------------- errors
def first_line(err: BaseException) -> str:
    """An error's first non-empty line, or its type's name: what a one-line message quotes."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ----------------------------------------------------------------------------------------- models
def unwrap_model(model):
    """The model under its wrappers: DistributedDataParallel / FSDP's ``module``, torch.compile's
    ``_orig_mod`` (what Accelerate's ``unwrap_model`` does, without an Accelerator)."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None or not hasattr(inner, "forward"):
            return model
        model = inner
