"""The model side of the job: packets from the decoding workers -> predictions -> the writer.

One stream (GPUs): the main thread runs the batches in order, one batch in flight on the device
while the previous one's results come back (non-blocking copies, a CUDA event) and go to the
writer. Several streams (CPUs): as many threads each run whole forwards with ``cores / streams``
intra-op threads. A small model scales poorly across intra-op threads (Depth Anything ``tiny``
at 518x784 on 2 cores: 1.3x from the second thread, against 2x from a second concurrent forward),
and a single-threaded forward does not stall at OpenMP barriers when the decoding workers take a
core for a moment. The writer accounts per unit, so the order in which batches finish is free.
"""
from __future__ import annotations

import queue
import threading
import time

import torch


class Stats:
    def __init__(self, streams: int):
        self.streams = streams
        self.started = time.perf_counter()
        self.model = self.data = self.writer = self.decode_cpu = 0.0
        self.first = None
        self.lock = threading.Lock()

    def add(self, other: "Stats") -> "Stats":
        """Fold in the stats of the next batch of units (the first batch's start-up time is kept)."""
        self.model += other.model
        self.data += other.data
        self.writer += other.writer
        self.decode_cpu += other.decode_cpu
        return self

    def summary(self, elapsed: float, n: int, writer_cpu: float) -> str:
        return (f"model busy {self.model / (elapsed * self.streams):.0%} ({self.streams} stream"
                f"{'s' if self.streams > 1 else ''}), waiting for decoded images {self.data / elapsed:.0%} (first "
                f"batch after {self.first or 0:.1f} s), for the writer {self.writer / (elapsed * self.streams):.0%}; "
                f"CPU per input: decoding {1e3 * self.decode_cpu / n:.0f} ms (workers), writing {1e3 * writer_cpu / n:.0f} ms")


def _packets(loader, stats: Stats, check_stop):
    iterator = iter(loader)
    while True:
        check_stop()
        t = time.perf_counter()
        packet = next(iterator, None)
        stats.data += time.perf_counter() - t
        if stats.first is None:
            stats.first = time.perf_counter() - stats.started
        if packet is None:
            return
        stats.decode_cpu += packet.get("cpu_s", 0.0)
        yield packet


def predict(predictors, packet: dict, device) -> list:
    """Every teacher's predictor on its inputs of a packet: per item, [(label, confidence or None)]
    per teacher."""
    hws = [item["original_hw"] for item in packet["items"]]
    per_teacher = [p(x if device is None else x.to(device, non_blocking=True), hws) for p, x in zip(predictors, packet["images"])]
    return [list(pairs) for pairs in zip(*per_teacher)]


def run_model(loader, predictor, device: torch.device, writer, streams: int, progress, check_stop=lambda: None) -> Stats:
    """Label every packet of ``loader``; ``progress(packet)`` after each is handed to the writer;
    ``check_stop()`` before each packet (it raises to stop: a signal came)."""
    if streams > 1 and device.type == "cpu":
        return _run_threads(loader, predictor, writer, streams, progress, check_stop)
    return _run_inline(loader, predictor, device, writer, progress, check_stop)


def _run_inline(loader, predictor, device, writer, progress, check_stop) -> Stats:
    stats = Stats(1)
    in_flight = None

    def hand_over(entry):
        packet, labels, event = entry
        t = time.perf_counter()
        if event is not None:
            event.synchronize()
        stats.model += time.perf_counter() - t
        t = time.perf_counter()
        writer.put(packet, labels)
        stats.writer += time.perf_counter() - t
        progress(packet)

    for packet in _packets(loader, stats, check_stop):
        labels = event = None
        if packet["images"] is not None:
            t = time.perf_counter()
            labels = [[tuple(None if x is None else x.to("cpu", non_blocking=True) for x in pair) for pair in item]
                      for item in predict(predictor, packet, device)]
            if device.type == "cuda":
                event = torch.cuda.Event()
                event.record()
            stats.model += time.perf_counter() - t
        if in_flight is not None:
            hand_over(in_flight)
        in_flight = (packet, labels, event)
    if in_flight is not None:
        hand_over(in_flight)
    return stats


def _run_threads(loader, predictor, writer, streams: int, progress, check_stop) -> Stats:
    stats = Stats(streams)
    work: queue.Queue = queue.Queue(maxsize=streams)
    failures: list[BaseException] = []

    def stream():
        while True:
            packet = work.get()
            if packet is None:
                return
            try:
                labels = None
                if packet["images"] is not None:
                    t = time.perf_counter()
                    labels = predict(predictor, packet, None)
                    with stats.lock:
                        stats.model += time.perf_counter() - t
                t = time.perf_counter()
                writer.put(packet, labels)
                with stats.lock:
                    stats.writer += time.perf_counter() - t
                    progress(packet)
            except BaseException as e:  # noqa: BLE001 - re-raised by the feeding thread
                failures.append(e)
                return

    threads = [threading.Thread(target=stream, name=f"inference-{i}", daemon=True) for i in range(streams)]
    for thread in threads:
        thread.start()
    try:
        for packet in _packets(loader, stats, check_stop):
            while True:
                if failures:
                    raise failures[0]
                try:
                    work.put(packet, timeout=0.5)
                    break
                except queue.Full:
                    continue
    finally:
        for _ in threads:
            while any(t.is_alive() for t in threads):
                try:
                    work.put(None, timeout=0.5)
                    break
                except queue.Full:
                    continue
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]
    return stats
