"""The decoding side of the job: DataLoader workers stream units, decode, and batch by size.

Worker ``w`` of ``W`` takes this process's pending units ``w, w + W, ...`` in order, reads each
unit's slice of the listing, decodes every input (``pseudolabel.decode``) and puts it in the bucket
of its inference size (the aspect-ratio bucket: same shape, so a batch is one tensor with no
padding). A bucket that reaches ``batch_size`` leaves as a batch. Partial buckets leave when a
worker holds more than ``bucket_buffer`` images (the fullest first), when the unit after theirs
ends (so a unit's shard can be closed at most one unit later), and at the end.

A worker yields *packets*: ``images`` (uint8 [B, 3, H, W] or None), ``items`` (per image: key,
unit, source, label size, bytes to store, metadata), ``errors`` (inputs that failed, with reasons)
and ``ends`` ((unit, number of inputs) once a unit is fully read). Nothing an input contains can
raise out of a worker: every failure is an error record.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pseudolabel.decode import ByteSource, DecodeFailure, DecodePlan, decode_item
from pseudolabel.inputs import Listing, make_key, unit_range


def _identity(x):
    return x


def _worker_init(nice: int, _worker_id: int):
    import cv2  # noqa: PLC0415

    cv2.setNumThreads(1)  # one core per worker; the model owns the rest
    lower_priority(nice)


def lower_priority(nice: int) -> None:
    """Make the calling thread (Linux: nice is per thread) or process yield to the model's threads."""
    if nice > 0:
        try:
            os.nice(nice)
        except OSError:
            pass


class LabelStream(IterableDataset):
    def __init__(self, listing: Listing, units: list[int], n_items: int, shard_size: int, plan: DecodePlan,
                 source: ByteSource, batch_size: int, bucket_buffer: int = 0):
        self.listing, self.units, self.n_items, self.shard_size = listing, list(units), n_items, shard_size
        self.plan, self.source, self.batch_size = plan, source, batch_size
        self.bucket_buffer = bucket_buffer or 4 * batch_size

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

    @staticmethod
    def _packet(records, errors, ends) -> dict:
        images = None
        if records:
            images = torch.from_numpy(np.ascontiguousarray(np.stack([r.pop("image") for r in records]).transpose(0, 3, 1, 2)))
        return {"images": images, "items": records, "errors": errors, "ends": ends}

    def __iter__(self):
        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info is not None else (0, 1)
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

        for unit in self.units[wid::workers]:
            start, stop = unit_range(unit, self.n_items, self.shard_size)
            for item in self.listing.read(start, stop):
                record, error = self._decode(item, unit)
                if error is not None:
                    errors.append(error)
                    continue
                hw = tuple(record["image"].shape[:2])
                buckets.setdefault(hw, []).append(record)
                held += 1
                if len(buckets[hw]) >= self.batch_size:
                    yield take(hw)
                elif held > self.bucket_buffer:
                    yield take(max(buckets, key=lambda k: len(buckets[k])))
            ends.append((unit, stop - start))
            for hw in [hw for hw, records in buckets.items() if any(r["unit"] != unit for r in records)]:
                yield take(hw)
            if errors or ends:
                yield self._packet([], errors, ends)
                errors, ends = [], []
        for hw in list(buckets):
            yield take(hw)
        if errors or ends:
            yield self._packet([], errors, ends)
        self.source.close()


def build_loader(stream: LabelStream, num_workers: int, prefetch_factor: int, pin_memory: bool, nice: int = 0) -> DataLoader:
    workers = min(num_workers, max(1, len(stream.units)))  # a worker without units would only cost memory
    kwargs = {}
    if workers > 0:
        kwargs = {"prefetch_factor": prefetch_factor, "worker_init_fn": functools.partial(_worker_init, nice),
                  "in_order": False}
    return DataLoader(stream, batch_size=None, collate_fn=_identity, num_workers=workers if num_workers else 0,
                      pin_memory=pin_memory, **kwargs)
