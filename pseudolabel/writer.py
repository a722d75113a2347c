"""The background writer: predictions in, shards out, so the model never waits for encoding or disk.

The main loop hands over (packet, label, confidence) through a bounded queue (memory stays flat:
at most ``queue_size`` batches wait). The writer thread (with ``label_size=original``) resizes each
prediction back to its sample's size (bilinear, as the recipe does; by default ``decode_sample``
does it when reading), quantises it (``distill.data.codec``), encodes the
PNGs (OpenCV releases the GIL; with ``encode_threads`` > 1 a pool encodes a batch in parallel)
and appends the sample to its unit's shard. A unit is committed (``ShardWriter.commit``: tar
renamed, then index written) as soon as every one of its inputs is accounted for, labeled or
skipped, and only if this process still holds the unit's claim (``owns``; a unit taken over by
another process is dropped, its temporary file removed). A failure in the thread is re-raised in
the main loop: an ``OSError`` (disk full, ...) as itself, naming the file, anything else as a
``RuntimeError``.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from distill.data.codec import encode_png, quantise, quantise_confidence
from pseudolabel.inputs import shard_name
from distill.data.shards import ShardWriter
from pseudolabel.stream import lower_priority


class Writer:
    def __init__(self, out_dir: str, header: dict, sample_meta: dict, image_ext: str, png_compression: int = 1,
                 encode_threads: int = 1, queue_size: int = 8, nice: int = 0, label_size: str = "inference",
                 teachers: list[dict] | None = None, owns=None):
        self.out_dir, self.header, self.sample_meta, self.label_size = out_dir, header, sample_meta, label_size
        self.teachers = teachers  # several teachers: name, space, ... of each (the first one's label is depth.png)
        self.space = header["space"]
        self.image_ext, self.png_compression = image_ext, png_compression
        self.nice = nice
        self.pool = (ThreadPoolExecutor(encode_threads, thread_name_prefix="encode", initializer=lower_priority,
                                        initargs=(nice,)) if encode_threads > 1 else None)
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.shards: dict[int, ShardWriter] = {}
        self.expected: dict[int, tuple] = {}  # unit -> (chunks ended, their inputs, chunks in the unit)
        self.accounted: dict[int, int] = {}
        self.owns = owns  # unit -> whether this process may commit it (its claim); None: always
        self.units_committed = 0
        self.units_lost: list[int] = []
        self.labeled = self.skipped = 0
        self.labeled_committed = 0  # in committed units: what survives an abort
        self.cpu_s = 0.0  # CPU time of the writer thread (diagnostics; the encode pool's not included)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)
        self.thread.start()

    # ----------------------------------------------------------------------- main-thread side
    def put(self, packet: dict, labels=None) -> None:
        """``labels``: per item of the packet, [(label [h, w], confidence or None)] per teacher (CPU tensors)."""
        while True:
            self._raise()
            try:
                self.queue.put((packet, labels), timeout=0.5)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Drain the queue, wait for the thread; re-raise its failure."""
        if self.thread.is_alive():
            while True:
                self._raise()
                try:
                    self.queue.put(None, timeout=0.5)
                    break
                except queue.Full:
                    continue
            self.thread.join()
        if self.pool is not None:
            self.pool.shutdown()
        self._raise()

    def abort(self) -> None:
        """Stop without committing: open shards' temporary files are removed."""
        if self.thread.is_alive():
            self.error = self.error or KeyboardInterrupt()
            try:
                while True:
                    self.queue.get_nowait()
            except queue.Empty:
                pass
            try:
                self.queue.put_nowait(None)
            except queue.Full:
                pass
            self.thread.join(timeout=30)
        for shard in self.shards.values():
            shard.abort()

    def _raise(self):
        if isinstance(self.error, OSError):
            raise self.error
        if self.error is not None and not isinstance(self.error, KeyboardInterrupt):
            raise RuntimeError(f"the shard writer failed: {type(self.error).__name__}: {self.error}") from self.error

    # --------------------------------------------------------------------------- thread side
    def _run(self):
        lower_priority(self.nice)
        try:
            while True:
                job = self.queue.get()
                if job is None or self.error is not None:
                    return
                start = time.thread_time()
                self._handle(*job)
                self.cpu_s += time.thread_time() - start
        except BaseException as e:  # noqa: BLE001 - surfaced in the main thread
            self.error = e

    def _shard(self, unit: int) -> ShardWriter:
        if unit not in self.shards:
            self.shards[unit] = ShardWriter(self.out_dir, shard_name(unit), unit, self.header)
            self.accounted.setdefault(unit, 0)
        return self.shards[unit]

    def _label_members(self, item: dict, label: np.ndarray, confidence, space: str, suffix: str):
        """One teacher's depth (and confidence) PNG members and decode parameters."""
        ih, iw = item["image_hw"]
        if self.label_size == "original" and label.shape != (ih, iw):
            label = cv2.resize(label, (iw, ih), interpolation=cv2.INTER_LINEAR)
            if confidence is not None:
                confidence = cv2.resize(confidence, (iw, ih), interpolation=cv2.INTER_LINEAR)
        codes, params = quantise(label, space)  # ValueError: the sample is reported, not stored
        members = [(f"depth{suffix}.png", encode_png(codes, self.png_compression))]
        if confidence is not None:
            members.append((f"conf{suffix}.png", encode_png(quantise_confidence(confidence), self.png_compression)))
        return members, params, list(label.shape)

    def _encode(self, item: dict, labels: list):
        """``labels``: [(label, confidence or None)] per teacher. The first teacher's label is
        ``depth.png`` / ``conf.png`` (what a single-teacher job writes); with several teachers, teacher
        ``name``'s is ``depth.<name>.png`` / ``conf.<name>.png`` and the JSON lists them under ``teachers``."""
        ih, iw = item["image_hw"]
        try:
            members, params, label_hw = self._label_members(item, *labels[0], self.space, "")
            extra = []
            for teacher, (label, conf) in zip((self.teachers or [])[1:], labels[1:]):
                more, more_params, _ = self._label_members(item, label, conf, teacher["space"], "." + teacher["name"])
                members += more
                extra.append((teacher, more_params, [m[0] for m in more]))
        except ValueError as e:
            return None, str(e)
        if item["stored"] is not None:
            members.insert(0, (self.image_ext, item["stored"]))
        meta = {
            "key": item["key"],
            "source": item["source"],
            "path": item["path"],
            **self.sample_meta,
            "original_size": list(item["original_hw"]),
            "image_size": [ih, iw],
            "label_size": label_hw,
            "inference_size": list(item["inference_hw"]),
            "depth": params,
            "image": {"stored": item["stored_how"], "field": self.image_ext if item["stored"] is not None else ""},
            **item["meta"],
        }
        if self.teachers:
            first = self.teachers[0]
            meta["teachers"] = [{"name": first["name"], "teacher": first["teacher"], "space": first["space"],
                                 "geometry": first["geometry"], "depth": params,
                                 "fields": [m[0] for m in members if m[0] in ("depth.png", "conf.png")]}]
            meta["teachers"] += [{"name": t["name"], "teacher": t["teacher"], "space": t["space"], "geometry": t["geometry"],
                                  "depth": p, "fields": fields} for t, p, fields in extra]
        members.append(("json", json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8")))
        return members, None

    def _account(self, unit: int, n: int = 1):
        self._shard(unit)
        self.accounted[unit] = self.accounted.get(unit, 0) + n

    def _handle(self, packet: dict, labels):
        touched = set()
        for error in packet["errors"]:
            self._shard(error["unit"]).add_error({"key": error["key"], "source": error["source"],
                                                  "path": error["path"], "reason": error["reason"]})
            self._account(error["unit"])
            self.skipped += 1
            touched.add(error["unit"])
        items = packet["items"]
        if items:
            for item in items:
                item["inference_hw"] = tuple(packet["images"][0].shape[-2:])
            args = [(item, [(label.numpy(), None if conf is None else conf.numpy()) for label, conf in per_teacher])
                    for item, per_teacher in zip(items, labels)]
            results = list(self.pool.map(lambda a: self._encode(*a), args)) if self.pool else [self._encode(*a) for a in args]
            for item, (members, reason) in zip(items, results):
                shard = self._shard(item["unit"])
                if members is None:
                    shard.add_error({"key": item["key"], "source": item["source"], "path": item["path"], "reason": reason})
                    self.skipped += 1
                else:
                    shard.add(item["key"], members)
                    self.labeled += 1
                self._account(item["unit"])
                touched.add(item["unit"])
        for unit, inputs, chunks in packet["ends"]:
            self._shard(unit)
            seen, expected, _ = self.expected.get(unit, (0, 0, chunks))
            self.expected[unit] = (seen + 1, expected + inputs, chunks)
            touched.add(unit)
        for unit in sorted(touched):
            seen, expected, chunks = self.expected.get(unit, (0, 0, -1))
            if seen == chunks and self.accounted.get(unit, 0) >= expected:
                if self.accounted[unit] != expected:
                    raise RuntimeError(f"unit {unit}: {self.accounted[unit]} inputs accounted for, {expected} expected")
                del self.expected[unit], self.accounted[unit]
                if self.owns is not None and not self.owns(unit):
                    self.shards.pop(unit).abort()
                    self.units_lost.append(unit)
                    continue
                shard = self.shards[unit]
                shard.commit(expected)  # left in self.shards until done: a failed commit's temporary file is aborted
                del self.shards[unit]
                self.units_committed += 1
                self.labeled_committed += len(shard.samples)
