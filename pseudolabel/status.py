"""``pseudolabel.py status O``: where a labeling job stands, read from its output directory alone
(also while launches run on it): units done / claimed (by whom, since when) / pending, images
labeled and skipped, the recent rate and an ETA.

Cheap on any job size: one listing of ``index/`` and of ``_claims/``, the claims themselves (a
line each), and of each index only its head, up to the per-sample table (the counts come before
it). The rate is taken from the indexes' mtimes: the inputs (units, for the ETA) finished in the
last ``WINDOW_S`` after the first of them, over the time since that first one.
"""
from __future__ import annotations

import json
import os
import time

from distill.data.shards import INDEX_DIR
from pseudolabel.claims import CLAIM_SUFFIX, CLAIMS_DIR, claim_state, read_claim
from pseudolabel.inputs import shard_name, unit_inputs, unit_range

WINDOW_S = 600.0
_SAMPLES = b',"samples":'  # the per-sample table: only a key matches (a quote inside a string is escaped)


def index_head(path: str) -> dict | None:
    """An index without its per-sample and error tables (read up to them); None if unreadable."""
    data = b""
    try:
        with open(path, "rb") as f:
            while _SAMPLES not in data:
                chunk = f.read(8192)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    cut = data.find(_SAMPLES)
    try:
        head = json.loads(data[:cut] + b"}" if cut >= 0 else data)
    except ValueError:
        return None
    return head if isinstance(head, dict) else None


def _names(folder: str, suffix: str) -> set[str]:
    try:
        return {e.name[: -len(suffix)] for e in os.scandir(folder) if e.name.endswith(suffix)}
    except FileNotFoundError:
        return set()


def job_status(out: str, job: dict, expiry_s: float = 600.0, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    per_unit = unit_inputs(job)
    indexes = _names(os.path.join(out, INDEX_DIR), ".json")
    claim_names = _names(os.path.join(out, CLAIMS_DIR), CLAIM_SUFFIX)
    done, claimed, pending = [], {}, []
    labeled = skipped = to_do = 0
    recent = []
    for unit in range(job["units"]):
        name = shard_name(unit)
        head = None
        if name in indexes:
            path = os.path.join(out, INDEX_DIR, name + ".json")
            head = index_head(path)
        if head is not None:
            done.append(unit)
            labeled += head.get("labeled", 0)
            skipped += head.get("skipped", 0)
            try:
                mtime = os.path.getmtime(path)
            except OSError:
                continue
            if mtime >= now - WINDOW_S:
                recent.append((mtime, head.get("inputs", 0)))
            continue
        start, stop = unit_range(unit, job["items"], per_unit)
        to_do += stop - start
        claim = read_claim(os.path.join(out, CLAIMS_DIR, name + CLAIM_SUFFIX)) if name in claim_names else None
        if claim is not None:
            claimed[unit] = {**claim, "state": claim_state(claim, expiry_s, now)}
        else:
            pending.append(unit)
    recent.sort()
    rate = unit_rate = None
    if len(recent) >= 2 and now > recent[0][0]:  # from the first unit finished in the window on
        rate = sum(inputs for _, inputs in recent[1:]) / (now - recent[0][0])
        unit_rate = (len(recent) - 1) / (now - recent[0][0])
    left = job["units"] - len(done)
    return {"units": job["units"], "done": done, "claimed": claimed, "pending": pending, "labeled": labeled,
            "skipped": skipped, "to_do": None if job["input_kind"] == "urls" else to_do, "rate": rate,
            "rate_over_s": now - recent[0][0] if recent else 0.0,
            "eta_s": (left / unit_rate if unit_rate else None) if left else 0.0,
            "complete": os.path.isfile(os.path.join(out, "manifest.json")), "now": now}


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_status(out: str, st: dict) -> str:
    lines = [f"{out}: {st['units']} units: {len(st['done'])} done, {len(st['claimed'])} claimed, "
             f"{len(st['pending'])} pending" + (" (complete: manifest.json written)" if st["complete"] else ""),
             f"images: {st['labeled']} labeled, {st['skipped']} skipped; " +
             ("inputs to do unknown (streamed URLs)" if st["to_do"] is None else f"{st['to_do']} inputs to do")]
    for unit, claim in sorted(st["claimed"].items()):
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(claim["since"])) if "since" in claim else "?"
        note = {"live": "", "silent": ", not renewed lately",
                "stale": ", stale: the next launch takes it over"}[claim["state"]]
        lines.append(f"  {shard_name(unit)}: claimed by {claim['owner']} since {since} "
                     f"(renewed {_duration(st['now'] - claim['mtime'])} ago{note})")
    if st["rate"] is None:
        lines.append(f"rate: fewer than 2 units finished in the last {_duration(WINDOW_S)}" +
                     ("" if st["eta_s"] != 0.0 else "; nothing left to do"))
    else:
        eta = "nothing left to do" if st["eta_s"] == 0.0 else f"ETA {_duration(st['eta_s'])}"
        lines.append(f"rate: {st['rate']:.2f} images/s over the last {_duration(st['rate_over_s'])}; {eta}")
    return "\n".join(lines)
