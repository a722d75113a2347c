"""Launches that share one output: owners, claims on units, clean-up of temporary files.

Every process has one owner id, ``<host>-<pid>-<random>`` (``distill.data.shards.owner_id``). Its
temporary files are ``PATH.tmp.<owner id>`` and its claims name it, so any other process can tell
whether the owner may still be alive: on the same host, while its pid is alive; on another host,
while the file is younger than an expiry. Host names are taken to identify pid namespaces (two
containers sharing a host name and not their pids would defeat the same-host test).

A claim is ``O/_claims/shard-XXXXXX.claim``, created with ``O_CREAT | O_EXCL`` (one winner, also
on NFS v3+), holding the owner, the time it was taken and the owner's expiry. The owner renews it
(mtime) every ``min(30 s, expiry / 4)`` from a thread, checking on each renewal that the file
still names it; it deletes the claim after the unit's index is written. A claim is stale once its
mtime is older than the expiry its owner declared (or when its owner, on this host, is dead); a
stale claim is taken over by renaming that very file away (``rename`` moves one directory entry
once: of two processes taking over, one gets it) and creating a fresh one with ``O_EXCL``; a
process that finds it moved a fresh claim instead (inode or mtime changed since it judged it
stale) puts it back. Whatever the races, the claim file names at most one owner at a time, and a
unit is committed only by the owner it names at that moment (``Claims.owns``, checked by the
writer just before the tar is renamed).
"""
from __future__ import annotations

import json
import os
import re
import socket
import threading
import time

from distill.data.shards import INDEX_DIR
from distill.runtime import TMP_SUFFIX, owner_id, remove_quietly
from pseudolabel.inputs import shard_name

CLAIMS_DIR = "_claims"
CLAIM_SUFFIX = ".claim"
LISTING = "listing"  # the claim of the one process that lists the inputs of a new job
TEMP_EXPIRY_S = 6 * 3600  # a temporary file of another host's process this old is abandoned
RENEW_MAX_S = 30.0
_OWNER = re.compile(r"^(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]+$")


def renew_interval(expiry_s: float) -> float:
    return min(RENEW_MAX_S, expiry_s / 4)


def owner_alive(owner: str) -> bool | None:
    """True / False for an owner on this host (its pid alive or not); None for another host's."""
    match = _OWNER.match(owner)
    if match is None or match["host"] != owner_id().rsplit("-", 2)[0]:
        return None
    if owner == owner_id():
        return True
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_temporaries(out: str) -> int:
    """Remove the abandoned temporary files of ``out`` (and of its index and claims folders): those
    without an owner id (earlier versions), of dead owners on this host, or older than
    ``TEMP_EXPIRY_S``. A live owner's stay: it may be writing them. Returns how many went."""
    removed, now = 0, time.time()
    for folder in (out, os.path.join(out, INDEX_DIR), os.path.join(out, CLAIMS_DIR)):
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            name = entry.name
            if TMP_SUFFIX + "." in name:
                owner = name.rsplit(TMP_SUFFIX + ".", 1)[1]
            elif name.endswith(TMP_SUFFIX):
                owner = ""
            elif folder.endswith(CLAIMS_DIR) and CLAIM_SUFFIX + "." in name:  # a claim being taken over
                owner = name.rsplit(CLAIM_SUFFIX + ".", 1)[1]
            else:
                continue
            try:
                age = now - entry.stat().st_mtime
            except FileNotFoundError:
                continue
            alive = owner_alive(owner) if _OWNER.match(owner) else False
            if alive is False or age > TEMP_EXPIRY_S:
                remove_quietly(entry.path)
                removed += 1
    return removed


def read_claim(path: str) -> dict | None:
    """A claim's content plus its ``mtime`` and ``stat``; None when there is none. A claim being
    created (empty for a moment) reads as owner ``?``."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except FileNotFoundError:
        return None
    try:
        claim = json.loads(data)
    except ValueError:
        claim = {}
    if not isinstance(claim, dict):
        claim = {}
    claim.setdefault("owner", "?")
    return {**claim, "mtime": st.st_mtime, "stat": (st.st_ino, st.st_mtime_ns)}


def claim_state(claim: dict, default_expiry_s: float, now: float | None = None) -> str:
    """``stale`` (may be taken over), ``silent`` (not renewed lately: its owner is probably gone and
    the claim will turn stale) or ``live``."""
    age = (time.time() if now is None else now) - claim["mtime"]
    expiry = claim.get("expiry_s") or default_expiry_s
    if owner_alive(claim["owner"]) is False or age > expiry:
        return "stale"
    return "silent" if age > 3 * renew_interval(expiry) else "live"


class Claims:
    """This process's claims on the units of ``out`` (or on another piece of work named by a string:
    ``LISTING``), renewed by a thread while held."""

    def __init__(self, out: str, expiry_s: float):
        self.dir = os.path.join(out, CLAIMS_DIR)
        os.makedirs(self.dir, exist_ok=True)
        self.owner, self.expiry_s = owner_id(), expiry_s
        self.held: set[int | str] = set()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="claim-renewal", daemon=True)
        self._thread.start()

    def path(self, unit: int | str) -> str:
        return os.path.join(self.dir, (unit if isinstance(unit, str) else shard_name(unit)) + CLAIM_SUFFIX)

    def acquire(self, unit: int | str) -> bool:
        """Claim ``unit`` if it is free or its claim is stale."""
        path = self.path(unit)
        for _ in range(3):  # the claim vanished between two looks: look again
            if self._create(path):
                break
            claim = read_claim(path)
            if claim is None:
                continue
            if claim["owner"] == self.owner:  # left by an attempt of this process cut short: still its own
                break
            if claim_state(claim, self.expiry_s) != "stale" or not self._take_over(path, claim):
                return False
            break
        else:
            return False
        with self.lock:
            self.held.add(unit)
        return True

    def _create(self, path: str) -> bool:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                                     "since": time.time(), "expiry_s": self.expiry_s}).encode())
        except BaseException:
            os.close(fd)
            remove_quietly(path)
            raise
        os.close(fd)
        return True

    def _take_over(self, path: str, stale: dict) -> bool:
        moved = f"{path}.{self.owner}"
        try:
            os.rename(path, moved)
        except FileNotFoundError:  # released or taken over meanwhile
            return self._create(path)
        st = os.stat(moved)
        if (st.st_ino, st.st_mtime_ns) != stale["stat"]:  # renewed or replaced since judged stale: not ours to take
            try:
                os.link(moved, path)
            except FileExistsError:  # a third process claimed it meanwhile: the moved claim's owner sees it lost
                pass
            os.remove(moved)
            return False
        os.remove(moved)
        return self._create(path)

    def owns(self, unit: int | str) -> bool:
        """Whether the claim file names this process now (the writer asks before committing)."""
        claim = read_claim(self.path(unit))
        return claim is not None and claim["owner"] == self.owner

    def release(self, unit: int | str) -> None:
        with self.lock:
            self.held.discard(unit)
        if self.owns(unit):
            remove_quietly(self.path(unit))

    def others(self, units) -> dict[int, dict]:
        """The claims other processes hold among ``units``."""
        found = {}
        for unit in units:
            claim = read_claim(self.path(unit))
            if claim is not None and claim["owner"] != self.owner:
                found[unit] = claim
        return found

    def close(self) -> None:
        """Stop renewing and release every claim still held."""
        self._stop.set()
        self._thread.join()
        for unit in list(self.held):
            self.release(unit)

    def _renew(self):
        while not self._stop.wait(renew_interval(self.expiry_s)):
            with self.lock:
                units = list(self.held)
            for unit in units:
                try:
                    if self.owns(unit):
                        os.utime(self.path(unit))
                    else:  # taken over (this process was stalled past the expiry): the writer will not commit it
                        with self.lock:
                            self.held.discard(unit)
                except OSError:  # a passing file-system hiccup: the next renewal tries again
                    pass
