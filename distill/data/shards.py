"""The shard format: writing tars with per-shard indexes, decoding samples, reading for training.

Layout of an output directory ``O``::

    O/shard-000000.tar ...          WebDataset shards (only complete ones ever carry this name)
    O/index/shard-000000.json       the shard's index, written after the tar is renamed: the
                                    record that the unit is done (keys, byte offset and size of
                                    every member, and the unit's skipped inputs with reasons)
    O/manifest.json, O/errors.jsonl written when every unit has its index
    O/_job/                         the frozen job: options, listing

A sample ``<key>`` is ``<key>.<image_ext>`` (unless ``store_image=none``), ``<key>.depth.png``
(16-bit, ``distill.data.codec``), ``<key>.conf.png`` (8-bit, with TTA) and ``<key>.json``. The PNGs
hold the prediction at the teacher's resolution (``label_size``, JSON) unless the job was run with
``label_size=original``; ``decode_sample`` returns them at the image's size either way. Every
sample of a job has the same members and the same JSON keys, as ``datasets``' WebDataset loader
requires. ``decode_sample`` is the one way back to float arrays: it accepts the dict of a
``webdataset.WebDataset`` (raw bytes), a row of ``datasets.load_dataset("webdataset", ...)``
(PIL images, parsed JSON) or the members read by ``ShardReader``.
"""
from __future__ import annotations

import bisect
import glob
import io
import json
import os
import tarfile
from collections import OrderedDict

import numpy as np
from torch.utils.data import Dataset

from distill.data.formats import pil_to_rgb, read_rgb
from distill.data.sample import Sample, SampleError, TeacherLabel
from distill.data.codec import decode_png, dequantise, dequantise_confidence
from distill.runtime import naming, owner_id, remove_quietly, temp_path, write_atomic

INDEX_DIR = "index"
MTIME = 1_700_000_000  # fixed member mtime: identical inputs give identical tars
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def index_path(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, INDEX_DIR, name + ".json")


class ShardWriter:
    """One unit's shard: members go to ``<name>.tar.tmp.<owner id>``; ``commit`` ends the archive, fsyncs
    and renames it to ``<name>.tar`` (no tar at all when nothing was labeled), then writes the index."""

    def __init__(self, out_dir: str, name: str, unit: int, header: dict):
        self.out_dir, self.name, self.unit, self.header = out_dir, name, unit, header
        self.path = os.path.join(out_dir, name + ".tar")
        self.tmp = temp_path(self.path)
        self._file = None
        self._pos = 0
        self.samples: list[list] = []
        self.errors: list[dict] = []
        self.fields: list[str] | None = None

    def _open(self):
        if self._file is None:
            self._file = open(self.tmp, "wb")  # noqa: SIM115
            self._pos = 0
        return self._file

    def _member(self, name: str, data: bytes) -> list[int]:
        f = self._open()
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), MTIME, 0o644
        header = info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
        offset = self._pos + len(header)
        pad = (-len(data)) % tarfile.BLOCKSIZE
        with naming(self.tmp):
            f.write(header)
            f.write(data)
            if pad:
                f.write(b"\0" * pad)
        self._pos = offset + len(data) + pad
        return [offset, len(data)]

    def add(self, key: str, members: list[tuple[str, bytes]]) -> None:
        fields = [field for field, _ in members]
        if self.fields is None:
            self.fields = fields
        elif fields != self.fields:
            raise ValueError(f"{key}: members {fields} differ from the shard's {self.fields}")
        self.samples.append([key] + [self._member(f"{key}.{field}", data) for field, data in members])

    def add_error(self, record: dict) -> None:
        self.errors.append(record)

    def commit(self, inputs: int) -> dict:
        size = 0
        if self.samples:
            f = self._open()
            with naming(self.tmp):
                f.write(b"\0" * (2 * tarfile.BLOCKSIZE))  # end-of-archive marker
                f.flush()
                os.fsync(f.fileno())
                size = f.tell()
                f.close()
            os.replace(self.tmp, self.path)
            fsync_dir(self.out_dir)
        elif self._file is not None:
            self._file.close()
            os.remove(self.tmp)
        index = {
            "version": 1,
            **self.header,
            "unit": self.unit,
            "shard": os.path.basename(self.path) if self.samples else None,
            "bytes": size,
            "inputs": inputs,
            "labeled": len(self.samples),
            "skipped": len(self.errors),
            "fields": self.fields or [],
            "written_by": owner_id(),  # the process that committed the unit (audits, tests)
            "samples": self.samples,
            "errors": self.errors,
        }
        write_atomic(index_path(self.out_dir, self.name), json.dumps(index, separators=(",", ":")).encode())
        return index

    def abort(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:  # its buffer cannot be flushed (disk full): the file goes anyway
                pass
            self._file = None
        remove_quietly(self.tmp)


def read_index(out_dir: str, name: str) -> dict | None:
    """A unit's index if the unit is complete (index readable and its tar present with the
    recorded size), else None."""
    path = index_path(out_dir, name)
    try:
        with open(path, "rb") as f:
            index = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if index.get("shard"):
        tar = os.path.join(out_dir, index["shard"])
        if not os.path.isfile(tar) or os.path.getsize(tar) != index.get("bytes"):
            return None
    return index


# ------------------------------------------------------------------------------------- decoding
def _field(sample: dict, name: str):
    for key in (name, "." + name):
        if key in sample and sample[key] is not None:
            return sample[key]
    return None


def _as_bytes(value):
    if isinstance(value, dict) and "bytes" in value:  # datasets Image(decode=False)
        return value["bytes"] if value["bytes"] is not None else open(value["path"], "rb").read()  # noqa: SIM115
    return value


def _array(value, what: str, key: str) -> np.ndarray:
    value = _as_bytes(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return decode_png(bytes(value))
        except ValueError:
            raise SampleError(f"{key}: {what} is not a decodable PNG") from None
    a = np.asarray(value)  # a PIL image (datasets decodes PNGs itself)
    if getattr(value, "mode", None) in ("I", "I;16", "I;16B", "I;16L") or a.dtype.kind in "iu" and a.dtype.itemsize > 1:
        return a.astype(np.uint16)
    return a


def _image(value, key: str) -> np.ndarray:
    from PIL import Image, ImageOps  # noqa: PLC0415

    value = _as_bytes(value)
    try:
        im = Image.open(io.BytesIO(bytes(value))) if isinstance(value, (bytes, bytearray, memoryview)) else value
        im.load()
        return pil_to_rgb(ImageOps.exif_transpose(im))
    except (OSError, ValueError, SyntaxError) as e:
        raise SampleError(f"{key}: stored image cannot be decoded ({type(e).__name__}: {e})") from None


def resize_label(target: np.ndarray, valid: np.ndarray, confidence, hw) -> tuple:
    """Bilinear (values, confidence) and nearest (mask) resize to ``hw``, as the recipe resizes
    predictions back to the image."""
    import cv2  # noqa: PLC0415

    size = (int(hw[1]), int(hw[0]))
    target = cv2.resize(target, size, interpolation=cv2.INTER_LINEAR)
    if not valid.all():
        valid = cv2.resize(valid.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    else:
        valid = np.ones(target.shape, dtype=bool)
    if confidence is not None:
        confidence = cv2.resize(confidence, size, interpolation=cv2.INTER_LINEAR)
    return target, valid, confidence


def decode_sample(sample: dict) -> Sample:
    """One stored sample -> ``Sample``: image uint8, target float32 in the teacher's output space,
    valid mask, space and geometry, confidence (float32 in [0, 1]) or None, key, and the sample's
    JSON as ``meta``. Raises SampleError (naming the key) on a malformed sample."""
    key = str(sample.get("__key__", "?"))
    meta = _field(sample, "json")
    if meta is None:
        raise SampleError(f"{key}: sample has no .json member")
    if not isinstance(meta, dict):
        try:
            meta = json.loads(bytes(_as_bytes(meta)))
        except ValueError:
            raise SampleError(f"{key}: .json member is not JSON") from None
    key = meta.get("key", key)
    codes, target, valid, confidence = _label(sample, "depth.png", "conf.png", meta["depth"], meta["space"], key)
    image_value = next((_field(sample, f) for f in IMAGE_FIELDS if _field(sample, f) is not None), None)
    if image_value is not None:
        image = _image(image_value, key)
    else:  # store_image=none: the source file, when it is one
        path = meta.get("path", "")
        if not path or not os.path.isfile(path):
            raise SampleError(f"{key}: no stored image and the source {path or meta.get('source')!r} is not a readable file")
        image = read_rgb(path)
    if image.shape[:2] != codes.shape and list(image.shape[:2]) != list(meta.get("image_size", image.shape[:2])):
        raise SampleError(f"{key}: image {image.shape[:2]} is not the recorded size {meta.get('image_size')}")
    hw = image.shape[:2]
    if codes.shape != hw:  # labels stored at the teacher's resolution: resize back
        target, valid, confidence = resize_label(target, valid, confidence, hw)
    labels = {}
    for i, t in enumerate(meta.get("teachers") or []):  # several teachers: each one's label, by name
        if i == 0:
            labels[t["name"]] = TeacherLabel(target, valid, meta["space"], meta["geometry"], confidence)
            continue
        conf_field = f"conf.{t['name']}.png" if f"conf.{t['name']}.png" in t.get("fields", []) else None
        c, tt, vv, cc = _label(sample, f"depth.{t['name']}.png", conf_field, t["depth"], t["space"], key)
        if c.shape != hw:
            tt, vv, cc = resize_label(tt, vv, cc, hw)
        labels[t["name"]] = TeacherLabel(tt, vv, t["space"], t["geometry"], cc)
    return Sample(image, target, valid, meta["space"], meta["geometry"], meta.get("dataset", "pseudolabel"), key,
                  confidence=confidence, meta=meta, teacher_labels=labels)


def _label(sample: dict, depth_field: str, conf_field: str | None, params: dict, space: str, key: str):
    """One stored label: (codes, target, valid, confidence or None) at the stored resolution."""
    depth = _field(sample, depth_field)
    if depth is None:
        raise SampleError(f"{key}: sample has no {depth_field} member")
    codes = _array(depth, depth_field, key)
    if codes.dtype != np.uint16 or codes.ndim != 2:
        raise SampleError(f"{key}: {depth_field} must be 16-bit single-channel, got {codes.dtype} {codes.shape}"
                          " (decode the raw bytes; an image decoder may have reduced it to 8 bits)")
    target = dequantise(codes, params)
    if params["encoding"] == "log" and space == "depth":
        valid = codes > 0  # zero depth is no depth
    else:
        valid = np.ones(codes.shape, dtype=bool)  # zero disparity: infinitely far, a valid label
    conf = _field(sample, conf_field) if conf_field else None
    confidence = dequantise_confidence(_array(conf, conf_field, key)) if conf is not None else None
    return codes, target, valid, confidence


TEACHER_CHOICES = ("random", "mean")


def choose_teacher(sample: Sample, how: str = "random", generator=None, agreement_tau: float = 0.05) -> Sample:
    """The label a student learns from, for a sample of several teachers (others pass unchanged):

    - ``random``: one teacher drawn per sample and step (Distill Any Depth: better than averaging);
    - a teacher's name: always that one;
    - ``mean``: every label converted to a common space (disparity if any teacher is scale-and-shift
      ambiguous, else depth), aligned to their mean as the geometry allows (``distill.alignment.combine``),
      averaged; the confidence becomes their agreement ``exp(-spread / agreement_tau)``.
    """
    labels = sample.teacher_labels
    if len(labels) < 2:
        return sample
    if how == "random":
        import torch  # noqa: PLC0415 - the DataLoader seeds torch per worker: reproducible draws

        name = list(labels)[int(torch.randint(len(labels), (1,), generator=generator))]
    elif how == "mean":
        return _mean_of_teachers(sample, agreement_tau)
    elif how in labels:
        name = how
    else:
        raise SampleError(f"{sample.key}: no teacher {how!r} in this sample (teachers: {', '.join(labels)}; "
                          f"or one of {', '.join(TEACHER_CHOICES)})")
    t = labels[name]
    sample.target, sample.valid, sample.space, sample.geometry, sample.confidence = (
        t.target, t.valid & np.isfinite(t.target), t.space, t.geometry, t.confidence)
    sample.meta = {**sample.meta, "chosen_teacher": name}
    return sample


def _mean_of_teachers(sample: Sample, tau: float) -> Sample:
    import torch  # noqa: PLC0415

    from distill.alignment import combine  # noqa: PLC0415
    from distill.spaces import OutputSpace, convert  # noqa: PLC0415

    labels = list(sample.teacher_labels.values())
    geometries = {t.geometry for t in labels}
    common = (OutputSpace("disparity", "utss") if "utss" in geometries else
              OutputSpace("depth", "uts") if "uts" in geometries else OutputSpace("depth", "metric"))
    maps = torch.stack([torch.from_numpy(convert(t.target, t.space, common.space)) for t in labels])[:, None]
    label, spread = combine(maps.float(), common)
    valid = np.logical_and.reduce([t.valid for t in labels])
    sample.target, sample.valid = label[0].numpy(), valid & np.isfinite(label[0].numpy())
    sample.space, sample.geometry = common.space, common.geometry
    sample.confidence = torch.exp(-spread[0] / tau).numpy()
    sample.meta = {**sample.meta, "chosen_teacher": "mean"}
    return sample


# -------------------------------------------------------------------------------------- reading
def _resolve(root) -> list[str]:
    """Index files of the complete shards under ``root``: an output directory, a glob of tars, a
    tar, or a list of those."""
    if isinstance(root, (list, tuple)):
        return [p for r in root for p in _resolve(r)]
    root = os.fspath(root)
    if os.path.isdir(root):
        return sorted(glob.glob(os.path.join(root, INDEX_DIR, "shard-*.json")))
    tars = sorted(glob.glob(root)) if any(c in root for c in "*?[") else [root]
    indexes = []
    for tar in tars:
        if not tar.endswith(".tar"):
            continue
        idx = os.path.join(os.path.dirname(tar), INDEX_DIR, os.path.basename(tar)[: -len(".tar")] + ".json")
        if not os.path.isfile(idx):
            raise FileNotFoundError(f"{tar}: no index {idx} (not a complete pseudo-label shard)")
        indexes.append(idx)
    return indexes


def _manifest_counts(out_dir: str) -> dict:
    try:
        with open(os.path.join(out_dir, "manifest.json")) as f:
            manifest = json.load(f)
        return {"shards": {s["name"]: s["samples"] for s in manifest["shards"]},
                "space": manifest["space"], "geometry": manifest["geometry"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {"shards": {}}


class ShardReader(Dataset):
    """Map-style ``Sample`` reader over complete pseudo-label shards (``root``: the job's output
    directory, a glob of its tars, or a list), by random access through the per-shard indexes.

    Only shard names and sample counts are held (from ``manifest.json`` when the job finished,
    else from the indexes); each process loads the indexes it needs (a few cached) and opens the
    tars itself, lazily, so the reader pickles into DataLoader workers and memory stays flat."""

    name = "shards"

    def __init__(self, root, name: str | None = None, cache_shards: int = 8, teacher: str = "random",
                 agreement_tau: float = 0.05):
        self.root = root
        self.cache_shards = cache_shards
        self.teacher, self.agreement_tau = teacher, agreement_tau  # shards of several teachers: ``choose_teacher``
        paths = _resolve(root)
        if not paths:
            raise FileNotFoundError(f"{root}: no complete pseudo-label shards (looked for {INDEX_DIR}/shard-*.json)")
        counts, self.shards = [], []
        manifests: dict[str, dict] = {}
        self.space = self.geometry = None
        for path in paths:
            out_dir = os.path.dirname(os.path.dirname(path))
            if out_dir not in manifests:  # a finished job lists its shards' sizes: no index to read
                manifests[out_dir] = _manifest_counts(out_dir)
            tar_name = os.path.basename(path)[: -len(".json")] + ".tar"
            known = manifests[out_dir]
            if tar_name in known["shards"]:
                labeled, space = known["shards"][tar_name], (known["space"], known["geometry"])
            else:
                index = self._load_index(path)
                labeled, tar_name, space = index["labeled"], index["shard"], (index["space"], index["geometry"])
            if self.space is None:
                self.space, self.geometry = space
            if labeled:
                self.shards.append((path, os.path.join(out_dir, tar_name)))
                counts.append(labeled)
        self.cumulative = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64).tolist()
        if name:  # otherwise each sample keeps the dataset name the job recorded (its dataset_name)
            self.name = name
        self._cache: OrderedDict = OrderedDict()
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()

    @staticmethod
    def _load_index(path: str) -> dict:
        try:
            with open(path, "rb") as f:
                return json.loads(f.read())
        except (OSError, ValueError) as e:
            raise SampleError(f"{path}: unreadable shard index ({type(e).__name__})") from None

    def __getstate__(self):
        return {**self.__dict__, "_cache": OrderedDict(), "_fds": {}}

    def __len__(self) -> int:
        return self.cumulative[-1]

    def _index(self, j: int) -> dict:
        if j in self._cache:
            self._cache.move_to_end(j)
            return self._cache[j]
        index = self._load_index(self.shards[j][0])
        self._cache[j] = index
        if len(self._cache) > self.cache_shards:
            self._cache.popitem(last=False)
        return index

    def _fd(self, tar: str) -> int:
        if self._pid != os.getpid():  # forked: never share file offsets/handles with the parent
            self._fds, self._pid = {}, os.getpid()
        if tar not in self._fds:
            if len(self._fds) >= 2 * self.cache_shards:
                for fd in self._fds.values():
                    os.close(fd)
                self._fds.clear()
            self._fds[tar] = os.open(tar, os.O_RDONLY)
        return self._fds[tar]

    def members(self, i: int) -> dict:
        """The raw members of sample ``i``: {"__key__": key, field: bytes, ...}."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        j = bisect.bisect_right(self.cumulative, i) - 1
        index = self._index(j)
        entry = index["samples"][i - self.cumulative[j]]
        fd = self._fd(self.shards[j][1])
        out = {"__key__": entry[0]}
        for field, (offset, size) in zip(index["fields"], entry[1:]):
            out[field] = os.pread(fd, size, offset)
        return out

    def __getitem__(self, i: int) -> Sample:
        sample = choose_teacher(decode_sample(self.members(i)), self.teacher, agreement_tau=self.agreement_tau)
        if self.name != ShardReader.name:
            sample.dataset = self.name
        return sample
