"""The job's options: one dataclass, filled from ``configs/pseudolabel/*.yaml``, ``key=value``
overrides and the command-line flags (``distill/pseudolabel.py``). No torch import here, so a bad
flag is reported before the heavy imports.

Options split in two: those that define the output (teacher, input, input size, TTA, what is
stored, shard size, ...) are frozen in ``O/_job/job.json`` by the first run, and a restart that
asks for different values is refused (mixing them would silently change half the labels);
performance knobs (batch size, workers, precision, compile, threads) may change between restarts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class PseudolabelConfig:
    # a teacher run (its final/), a transformers depth model dir or hub id (any architecture
    # AutoModelForDepthEstimation knows), or an original Depth Anything .pth/.safetensors file
    teacher: str | None = None  # required: run, model dir, hub id or .pth/.safetensors; several: comma-separated
    teacher_preset: str | None = None  # the size of an original weight file (vits, vitb, vitl, vitg)
    teacher_max_depth: int | None = None  # an original metric weight file's max_depth (20 indoor, 80 outdoor)
    input: str | None = None  # directory, glob, list file, .tar shard(s), or hf:NAME_OR_PATH
    output: str | None = None  # required: the output folder of WebDataset shards
    input_type: Literal["auto", "files", "list", "tars", "hf", "urls"] = "auto"  # the input's kind; auto: detected
    hf_split: str = "train"  # Hugging Face inputs: split, image column, optional key column
    image_column: str = "image"  # Hugging Face inputs: the image column
    key_column: str | None = None  # Hugging Face inputs: the key column; default: row number
    select: str | None = None  # a file of source ids to label, one per line (-m pseudolabel.curation's selection_ids.txt)

    # inference (distill.inference.InputRule)
    # processor: the teacher's own image processor and post-processing (what pipeline() does);
    # depth_anything: Depth Anything's original rule, shorter side >= input_size, OpenCV bicubic
    resize: Literal["processor", "depth_anything"] = "processor"  # the teacher's image processor, or Depth Anything's rule
    input_size: int | None = None  # the target size of either rule (default: 518 / the processor's own)
    max_aspect: float = 4.0  # depth_anything rule: longer side capped at input_size * max_aspect
    tta: Literal["none", "flip", "flip+scales"] = "none"  # test-time augmentation views; confidence from their agreement
    tta_scales: list[float] = field(default_factory=lambda: [0.75, 1.25])  # extra scales for flip+scales
    confidence_tau: float = 0.05  # confidence = exp(-relative spread / tau), see pseudolabel.tta
    batch_size: int = 8  # images per forward pass
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile the teacher(s)
    threads: int = 0  # torch CPU threads of each stream; 0: torch's default / streams
    streams: int = 0  # concurrent forwards (pseudolabel.runner); 0: 1 on GPU, 2 on a CPU with 2+ cores

    # decoding
    num_workers: int = 2  # decoding worker processes; 0: in the main process
    prefetch_factor: int = 4  # batches each decoding worker prepares ahead
    draft: bool = True  # decode JPEGs at a reduced DCT scale when the target is much smaller
    max_pixels: int = 100_000_000  # decompression-bomb guard: larger images are skipped
    bucket_buffer: int = 0  # images a worker may hold while filling size buckets; 0: 4 x batch_size
    nice: int = 10  # niceness of decoding workers and writer threads: on shared cores the model runs first

    # output
    store_image: Literal["original", "reencode", "none"] = "original"  # the input's bytes, re-encoded, or no image
    image_max_side: int = 1024  # store_image=reencode: longer side at most this
    image_ext: Literal["jpg", "png", "webp"] = "jpg"  # the image field of every sample
    jpeg_quality: int = 95  # quality of re-encoded jpg/webp images (1-100)
    shard_size: int = 1000  # inputs per shard (a shard holds fewer samples when some are skipped)
    # depth.png / conf.png at the teacher's resolution ("inference": decode_sample resizes them to the
    # image, bilinear, when reading) or already resized to the stored image ("original": 5-20x the
    # bytes and encoding time for photos, the same decoded samples)
    label_size: Literal["inference", "original"] = "inference"  # label PNGs at the teacher's or the stored image's size
    png_compression: int = 1  # zlib level of depth/confidence PNGs (0-9)
    encode_threads: int = 0  # threads encoding PNGs behind the writer; 0: 1 on CPU, 4 on GPU
    queue_size: int = 8  # batches waiting for the writer (bounded: memory stays flat)
    dataset_name: str | None = None  # Sample.dataset of decoded samples; default: output dir name
    progress: bool = True  # progress bar on stderr (first process)

    # launches sharing one output (pseudolabel.claims)
    claim_units: int = 8  # units claimed at a time (each batch restarts the decoding workers)
    claim_expiry_s: float = 600.0  # a claim not renewed for this long is taken over (renewed every min(30 s, 1/4 of it))

    def __post_init__(self):
        checks = [
            (self.input_size is None or self.input_size >= 14, "input_size must be >= 14"),
            (self.max_aspect >= 1, "max_aspect must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.prefetch_factor >= 1, "prefetch_factor must be >= 1"),
            (self.shard_size >= 1, "shard_size must be >= 1"),
            (self.image_max_side >= 1, "image_max_side must be >= 1"),
            (1 <= self.jpeg_quality <= 100, "jpeg_quality must be in [1, 100]"),
            (0 <= self.png_compression <= 9, "png_compression must be in [0, 9]"),
            (self.max_pixels >= 1, "max_pixels must be >= 1"),
            (self.confidence_tau > 0, "confidence_tau must be > 0"),
            (all(0.1 <= s <= 4 for s in self.tta_scales), "tta_scales must lie in [0.1, 4]"),
            (self.queue_size >= 1, "queue_size must be >= 1"),
            (min(self.encode_threads, self.threads, self.streams, self.bucket_buffer) >= 0,
             "encode_threads, threads, streams and bucket_buffer must be >= 0"),
            (0 <= self.nice <= 19, "nice must be in [0, 19]"),
            (self.claim_units >= 1, "claim_units must be >= 1"),
            (self.claim_expiry_s >= 4, "claim_expiry_s must be >= 4"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# Options that may change between a run and its restart: how fast, not what is written.
PERFORMANCE_OPTIONS = (
    "batch_size", "precision", "compile", "threads", "streams", "num_workers", "prefetch_factor", "bucket_buffer",
    "encode_threads", "queue_size", "progress", "nice", "claim_units", "claim_expiry_s",
)


# Output-defining options added since the first jobs, with the value those jobs were run with.
LEGACY_DEFAULTS = {"resize": "depth_anything", "teacher_preset": None, "teacher_max_depth": None, "select": None}


def defining_options(cfg: PseudolabelConfig) -> dict:
    """The options frozen in the job file (everything that shapes the output)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in PERFORMANCE_OPTIONS and k != "output"}
