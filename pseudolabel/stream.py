"""The decoding side of the job: DataLoader workers stream units, decode, and batch by size.

This process's pending units are cut into chunks of ``max(16, 4 x batch_size)`` consecutive
inputs, dealt round-robin to the workers in listing order (so every worker is busy even on one
unit, and units complete in order). A worker reads its chunk's slice of the listing, decodes every
input (``pseudolabel.decode``) and puts it in the bucket of its inference size (the aspect-ratio
bucket: same shape, so a batch is one tensor with no padding). A bucket that reaches
``batch_size`` leaves as a batch. Partial buckets leave when a worker holds more than
``bucket_buffer`` images (the fullest first), when the worker moves on to another unit (so a
unit's shard can be closed), and at the end.

A worker yields *packets*: ``images`` (per teacher, the model inputs [B, 3, H, W]: float32 from
the teacher's image processor, uint8 under the Depth Anything rule; or None), ``items`` (per image: key,
unit, source, sizes, bytes to store, metadata), ``errors`` (inputs that failed, with reasons) and
``ends`` ((unit, inputs in the chunk, chunks in the unit) once a chunk is fully read; a streamed
URL is one chunk whose inputs are counted as they come): the writer
commits a unit when all its chunks ended and all their inputs are accounted for. Nothing an input
contains can raise out of a worker: every failure is an error record.
"""
from __future__ import annotations

import functools
import os
import signal
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pseudolabel.decode import ByteSource, DecodeFailure, DecodePlan, decode_item
from pseudolabel.inputs import Listing, make_key, unit_range


def identity(x):
    return x


def init_worker(nice: int, _worker_id: int):
    import cv2  # noqa: PLC0415

    cv2.setNumThreads(1)  # one core per worker; the model owns the rest
    lower_priority(nice)
    # Ctrl-C and a scheduler's SIGTERM reach the whole process group: the main process stops the
    # job (pseudolabel.job) and then its workers, which would otherwise die under it mid-batch
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def lower_priority(nice: int) -> None:
    """Make the calling thread (Linux: nice is per thread) or process yield to the model's threads."""
    if nice > 0:
        try:
            os.nice(nice)
        except OSError:
            pass


class LabelStream(IterableDataset):
    def __init__(self, listing: Listing, units: list[int], n_items: int, unit_inputs: int, plan: DecodePlan,
                 source: ByteSource, batch_size: int, bucket_buffer: int = 0, chunk_size: int = 0):
        self.listing, self.units, self.n_items, self.unit_inputs = listing, list(units), n_items, unit_inputs
        self.plan, self.source, self.batch_size = plan, source, batch_size
        self.bucket_buffer = bucket_buffer or 4 * batch_size
        self.chunk_size = chunk_size or max(16, 4 * batch_size)

    def _decode(self, item: dict, unit: int):
        record = {"key": make_key(item["id"]), "unit": unit, "source": item["id"], "path": item.get("path", "")}
        try:
            out = decode_item(self.source.read(item), self.plan)
        except DecodeFailure as e:
            return None, {**record, "reason": str(e)}
        except Exception as e:  # noqa: BLE001 - the job never crashes on input
            return None, {**record, "reason": f"unexpected {type(e).__name__}: {e}"}
        record.update(out)
        return record, None

    def _packet(self, records, errors, ends) -> dict:
        images = None
        if records:
            inputs = [r.pop("inputs") for r in records]
            images = [torch.from_numpy(np.stack([x[k] for x in inputs])) for k in range(len(inputs[0]))]
        cpu = time.process_time()  # this worker's CPU time since its last packet (diagnostics)
        spent, self._cpu = cpu - self._cpu, cpu
        return {"images": images, "items": records, "errors": errors, "ends": ends, "cpu_s": spent}

    def _chunks(self, wid: int, workers: int):
        """This worker's (unit, start, stop, chunks in the unit): the pending units cut in chunks,
        dealt round-robin, lazily (a rank's share of a huge listing is never held in memory)."""
        k = 0
        for unit in self.units:
            start, stop = unit_range(unit, self.n_items, self.unit_inputs)
            n = -(-(stop - start) // self.chunk_size)
            for c in range(n):
                if k % workers == wid:
                    yield unit, start + c * self.chunk_size, min(stop, start + (c + 1) * self.chunk_size), n
                k += 1

    def __iter__(self):
        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self._cpu = time.process_time()
        buckets: dict[tuple, list] = {}
        held = 0
        errors, ends = [], []

        def take(hw):
            nonlocal held, errors, ends
            records = buckets.pop(hw)
            held -= len(records)
            packet = self._packet(records, errors, ends)
            errors, ends = [], []
            return packet

        for unit, start, stop, n_chunks in self._chunks(wid, workers):
            # leftovers of earlier units leave now, so their shards can be committed
            for hw in [hw for hw, records in buckets.items() if any(r["unit"] != unit for r in records)]:
                yield take(hw)
            count = 0
            for item in (x for entry in self.listing.read(start, stop) for x in self.source.expand(entry)):
                count += 1
                record, error = self._decode(item, unit)
                if error is not None:
                    errors.append(error)
                    continue
                hw = tuple(tuple(x.shape[-2:]) for x in record["inputs"])  # one batch: the same shapes for every teacher
                buckets.setdefault(hw, []).append(record)
                held += 1
                if len(buckets[hw]) >= self.batch_size:
                    yield take(hw)
                elif held > self.bucket_buffer:
                    yield take(max(buckets, key=lambda k: len(buckets[k])))
            ends.append((unit, count, n_chunks))
            if errors or ends:
                yield self._packet([], errors, ends)
                errors, ends = [], []
        for hw in list(buckets):
            yield take(hw)
        self.source.close()


def build_loader(stream: LabelStream, num_workers: int, prefetch_factor: int, pin_memory: bool, nice: int = 0) -> DataLoader:
    chunks = sum(-(-(b - a) // stream.chunk_size) for a, b in
                 (unit_range(u, stream.n_items, stream.unit_inputs) for u in stream.units[:num_workers]))
    workers = min(num_workers, max(1, chunks))  # a worker without chunks would only cost memory
    kwargs = {}
    if workers > 0:
        kwargs = {"prefetch_factor": prefetch_factor, "worker_init_fn": functools.partial(init_worker, nice),
                  "in_order": False}
    return DataLoader(stream, batch_size=None, collate_fn=identity, num_workers=workers if num_workers else 0,
                      pin_memory=pin_memory, **kwargs)
