"""Input discovery, the frozen listing, keys, and the deterministic split of the work.

Inputs (``--input``, kind detected unless ``input_type`` says):

- a directory, walked recursively in sorted order (hidden entries skipped); files with an image
  extension are inputs (a file that is not really an image becomes an error record later);
  a directory holding no images but ``.tar`` files is read as WebDataset shards, and one holding a
  ``datasets`` ``save_to_disk`` dataset as a Hugging Face dataset;
- a glob (``*``, ``?``, ``[...]``, and ``{a,b}`` / ``{000..009}`` brace expansion);
- a text file listing paths, one per line (relative paths are relative to the list file; blank
  lines and ``#`` comments skipped; a file listed twice, in any spelling, is labeled once);
- WebDataset ``.tar`` shards (one file, a glob, or a directory of them): each sample key's first
  image member is an input; members are located once at discovery and read back by offset;
- ``hf:NAME_OR_PATH`` (or a hub id): a Hugging Face dataset, split ``hf_split``, column
  ``image_column`` (images as ``datasets.Image`` or bytes), keyed by ``key_column`` or row number;
- WebDataset URLs, streamed rather than indexed (corpora in object stores, labeled without a
  copy): ``pipe:COMMAND`` (the command's standard output is a tar, e.g. ``pipe:aws s3 cp
  s3://b/in-000.tar -``) or an fsspec URL (``s3://``, ``gs://``, ``https://``, ... through the
  matching fsspec package), with ``{000..099}`` brace expansion, or with ``input_type: urls`` a
  text file of such URLs, one per line. A stream cannot be read by offset, so each URL is one unit
  (one output shard), whatever ``shard_size`` says, and its inputs are found while it is labeled.

The first run writes the listing to ``O/_job/items.jsonl`` (one JSON line per input: ``id`` the
stable source id, ``path`` for messages, and where to read it) with an offsets array, so a restart
labels exactly the inputs of the first run even if the corpus changed, and workers read their
slice of a listing of any length by offset without holding it in memory.

Work split: the listing is cut into *units* of ``shard_size`` consecutive inputs (one URL for
streamed inputs); unit ``u``
becomes output shard ``shard-{u:06d}.tar``, labeled by whichever process claims it
(``pseudolabel.job``). Neither depends on the number of processes, so 1 and N processes write the
same shards with the same keys.

Keys: ``<sanitised file stem, at most 32 chars>_<first 20 hex digits of sha1(source id)>``: no
dots, unique (80-bit hash of a unique id), and stable across runs.
"""
from __future__ import annotations

import array
import glob
import hashlib
import io
import json
import os
import re
import shutil
import struct
import tarfile

import numpy as np

from distill.runtime import first_line

IMAGE_EXTS = (".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pnm")
COMPRESSED_TAR_EXTS = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
_GLOB_CHARS = re.compile(r"[*?\[]")
_BRACES = re.compile(r"\{[^{}]*(,|\.\.)[^{}]*\}")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_URL = re.compile(r"^(pipe:|[A-Za-z][A-Za-z0-9+.-]*://)")


class InputError(ValueError):
    """The input cannot be used at all (not found, empty, unsupported); one line for the user."""


# ------------------------------------------------------------------------------------------ keys
def make_key(source_id: str) -> str:
    stem = os.path.splitext(os.path.basename(source_id.rstrip("/").split(":")[-1]))[0]
    stem = re.sub(r"[^A-Za-z0-9]+", "_", stem).strip("_")[:32] or "x"
    return f"{stem}_{hashlib.sha1(source_id.encode('utf-8')).hexdigest()[:20]}"


def unit_inputs(job: dict) -> int:
    """Listing items per unit: ``shard_size``, or 1 for streamed URL inputs (one tar, one unit)."""
    return 1 if job["input_kind"] == "urls" else job["options"]["shard_size"]


def unit_count(n_items: int, shard_size: int) -> int:
    return (n_items + shard_size - 1) // shard_size


def unit_range(unit: int, n_items: int, shard_size: int) -> tuple[int, int]:
    return unit * shard_size, min(n_items, (unit + 1) * shard_size)


def rank_units(n_units: int, rank: int, world: int) -> list[int]:
    return list(range(rank, n_units, world))


def shard_name(unit: int) -> str:
    return f"shard-{unit:06d}"


# ------------------------------------------------------------------------------------- discovery
def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def _expand(pattern: str) -> list[str]:
    patterns = [pattern]
    if _BRACES.search(pattern):
        import braceexpand  # noqa: PLC0415 - a webdataset dependency

        patterns = list(braceexpand.braceexpand(pattern))
    found = set()
    for p in patterns:
        found.update(glob.glob(p, recursive=True) if _GLOB_CHARS.search(p) else ([p] if os.path.exists(p) else []))
    return sorted(os.path.abspath(p) for p in found if os.path.isfile(p))


def _static_prefix(pattern: str) -> str:
    """The directory part of a pattern before its first wildcard (ids are relative to it)."""
    m = re.search(r"[*?\[{]", pattern)
    head = pattern[: m.start()] if m else pattern
    return os.path.abspath(os.path.dirname(head) if not head.endswith(os.sep) else head)


def _walk(root: str, exclude: str | None):
    """Files under ``root`` in a deterministic order (sorted per directory), hidden ones skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (exclude is None or os.path.abspath(os.path.join(dirpath, d)) != exclude))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield os.path.join(dirpath, name)


def _is_hf_saved(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json"))


def detect(cfg, exclude: str | None = None) -> tuple[str, dict]:
    """(kind, spec) of ``cfg.input``; kind in files | list | tars | hf | urls. Raises InputError."""
    spec = cfg.input
    if not spec:
        raise InputError("no input given (--input)")
    kind = cfg.input_type
    if kind == "hf" or (kind == "auto" and spec.startswith("hf:")):
        return "hf", {"name": spec[3:] if spec.startswith("hf:") else spec}
    if kind in ("auto", "urls") and _URL.match(spec):
        return "urls", {"urls": _expand_urls(spec)}
    if kind == "urls":
        if not os.path.isfile(spec):
            raise InputError(f"{spec}: neither a URL (pipe:..., s3://...) nor a text file of URLs")
        return "urls", {"list": os.path.abspath(spec)}
    if spec.lower().endswith(COMPRESSED_TAR_EXTS):
        raise InputError(f"{spec}: compressed tar shards cannot be read by offset; decompress them to .tar first")
    if os.path.isdir(spec):
        root = os.path.abspath(spec)
        if kind in ("auto", "hf") and _is_hf_saved(root):
            return "hf", {"name": root}
        if kind in ("auto", "files", "tars"):
            # the folder is walked again lazily by discover: no list of a million paths held here
            has_images = kind != "tars" and any(is_image(f) for f in _walk(root, exclude))
            if kind == "tars" or (kind == "auto" and not has_images):
                tars = [f for f in _walk(root, exclude) if f.endswith(".tar")]
                if tars or kind == "tars":
                    if not tars:
                        raise InputError(f"{spec}: no .tar shards found")
                    return "tars", {"tars": tars, "root": root}
            if not has_images:
                raise InputError(f"{spec}: no images found (extensions: {' '.join(IMAGE_EXTS)})")
            return "files", {"walk": exclude, "root": root}
        raise InputError(f"{spec}: is a directory, not a {kind} input")
    if os.path.isfile(spec) and not _GLOB_CHARS.search(os.path.basename(spec)):
        path = os.path.abspath(spec)
        if kind == "tars" or (kind == "auto" and path.endswith(".tar")):
            return "tars", {"tars": [path], "root": os.path.dirname(path)}
        if kind == "files" or (kind == "auto" and is_image(path)):
            return "files", {"files": [path], "root": os.path.dirname(path)}
        return "list", {"list": path}
    if _GLOB_CHARS.search(spec) or _BRACES.search(spec):
        matches = _expand(spec)
        if not matches:
            raise InputError(f"{spec}: the pattern matches no files")
        root = _static_prefix(spec)
        tars = [m for m in matches if m.endswith(".tar")]
        if kind == "tars" or (kind == "auto" and tars and len(tars) == len(matches)):
            return "tars", {"tars": tars, "root": root}
        images = [m for m in matches if is_image(m) or kind == "files"]
        if not images:
            raise InputError(f"{spec}: the pattern matches no images")
        return "files", {"files": images, "root": root}
    if kind == "auto" and _HUB_ID.match(spec) and not os.path.exists(spec):
        return "hf", {"name": spec}
    raise InputError(f"{spec}: input not found")


def _expand_urls(spec: str) -> list[str]:
    import braceexpand  # noqa: PLC0415 - a webdataset dependency

    return list(braceexpand.braceexpand(spec)) if _BRACES.search(spec) else [spec]


def _url_items(spec):
    """One item per URL (a whole tar, streamed when labeled: ``pseudolabel.decode.stream_tar``)."""
    urls = spec.get("urls")
    if urls is None:
        lines = (line.strip() for line in _lines(spec["list"]))
        urls = (u for line in lines if line and not line.startswith("#") for u in _expand_urls(line))
    for url in urls:
        yield {"id": url, "path": url, "url": url}


def _file_items(spec):
    root = spec["root"]
    files = (f for f in _walk(root, spec["walk"]) if is_image(f)) if "walk" in spec else spec["files"]
    for path in files:
        yield {"id": os.path.relpath(path, root).replace(os.sep, "/"), "path": path, "file": path}


def _lines(path: str):
    """The lines of a text file, read as they are needed (a list of millions of paths is never held)."""
    try:
        with open(path, encoding="utf-8") as f:
            yield from f
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the list file ({type(e).__name__})") from None


def _list_items(spec):
    base = os.path.dirname(spec["list"])
    for line in _lines(spec["list"]):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = os.path.normpath(os.path.join(base, line))  # absolute lines stay absolute
        # the id is relative to the list's folder however the line was written, so "a.jpg",
        # "./a.jpg" and "/data/a.jpg" are one input, and moving corpus and list together keeps keys
        yield {"id": os.path.relpath(path, base).replace(os.sep, "/"), "path": path, "file": path}


def wds_split(name: str) -> tuple[str | None, str | None]:
    """WebDataset's grouping: key = path up to the first dot of the basename, field = the rest."""
    m = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
    return (m.group(1), m.group(2)) if m else (None, None)


def wds_members(tar: tarfile.TarFile):
    """(sample key, member, whether it is an image) for each file member of a WebDataset tar, in order."""
    for member in tar:
        if member.isfile():
            key, field = wds_split(member.name)
            if key is not None:
                yield key, member, is_image("." + field.rsplit(".", 1)[-1])


def _tar_items(spec):
    root = spec["root"]
    for tar in spec["tars"]:
        rel = os.path.relpath(tar, root).replace(os.sep, "/")
        images, order, error = {}, [], None
        try:
            with tarfile.open(tar, "r:") as tf:
                for key, m, image in wds_members(tf):
                    if key not in images:
                        images[key] = None
                        order.append(key)
                    if images[key] is None and image:
                        images[key] = (m.name, m.offset_data, m.size)
        except (tarfile.TarError, OSError, EOFError) as e:
            error = f"unreadable tar after {len(order)} samples ({type(e).__name__}: {e})"
        for key in order:
            sid, where = f"{rel}:{key}", f"{tar}:{key}"
            member = images[key]
            if member is None:
                yield {"id": sid, "path": where, "error": "no image member in this WebDataset sample"}
            else:
                yield {"id": sid, "path": f"{tar}:{member[0]}", "tar": tar, "offset": member[1], "size": member[2]}
        if error is not None:
            yield {"id": f"{rel}:", "path": tar, "error": error}


def load_hf(name: str, split: str, image_column: str):
    """A map-style ``datasets.Dataset`` whose image column yields raw bytes (decoded by us)."""
    import datasets  # noqa: PLC0415

    try:
        if _is_hf_saved(name):
            ds = datasets.load_from_disk(name)
        else:
            ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 - any failure to open the dataset is one line for the user
        raise InputError(f"hf:{name}: cannot load the dataset ({type(e).__name__}: {first_line(e)})") from None
    if isinstance(ds, (datasets.DatasetDict, dict)):
        if split not in ds:
            raise InputError(f"hf:{name}: no split {split!r}; has {sorted(ds)}")
        ds = ds[split]
    if not isinstance(ds, datasets.Dataset):
        raise InputError(f"hf:{name}: expected a map-style dataset, got {type(ds).__name__}")
    if image_column not in ds.column_names:
        raise InputError(f"hf:{name}: no column {image_column!r}; has {ds.column_names}")
    if isinstance(ds.features[image_column], datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    return ds


def _hf_items(spec, cfg):
    ds = load_hf(spec["name"], cfg.hf_split, cfg.image_column)
    if cfg.key_column and cfg.key_column not in ds.column_names:
        raise InputError(f"hf:{spec['name']}: no key column {cfg.key_column!r}")
    keys = ds[cfg.key_column] if cfg.key_column else None
    for row in range(len(ds)):
        sid = f"{spec['name']}:{cfg.hf_split}:{keys[row] if keys is not None else row}"
        yield {"id": sid, "path": f"hf:{spec['name']}[{cfg.hf_split}][{row}]", "row": row}


def discover(kind: str, spec: dict, cfg):
    if kind == "files":
        return _file_items(spec)
    if kind == "list":
        return _list_items(spec)
    if kind == "tars":
        return _tar_items(spec)
    if kind == "urls":
        return _url_items(spec)
    return _hf_items(spec, cfg)


# --------------------------------------------------------------------------------------- listing
def write_listing(items, job_dir: str, unique: bool = False) -> dict:
    """Stream ``items`` into ``items.jsonl`` + ``items.offsets.npy`` (atomically); ids seen twice
    are dropped (counted), unless the caller knows them ``unique`` (a folder walk). Returns
    {"items": N, "duplicates": D}.

    Memory stays flat in N: offsets go to a file as they come; the duplicate check keeps 8 bytes
    per input (a 64-bit hash; ids compared where hashes meet) and rewrites the listing only when
    there are duplicates."""
    os.makedirs(job_dir, exist_ok=True)
    path = os.path.join(job_dir, "items.jsonl")
    raw_offsets = os.path.join(job_dir, "items.offsets.tmp")
    hashes = array.array("Q")
    with open(path + ".tmp", "wb") as f, open(raw_offsets, "wb") as o:
        buf, obuf = io.BufferedWriter(f, 1 << 20), io.BufferedWriter(o, 1 << 16)
        end = 0
        obuf.write(struct.pack("<Q", 0))
        for item in items:
            if not unique:
                hashes.append(_id_hash(item["id"]))
            line = (json.dumps(item, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
            buf.write(line)
            end += len(line)
            obuf.write(struct.pack("<Q", end))
        buf.flush()
        obuf.flush()
    n = os.path.getsize(raw_offsets) // 8 - 1
    drop = _repeated(hashes, path + ".tmp") if len(hashes) else set()
    del hashes
    if drop:  # rare: written again without them
        _drop_lines(path + ".tmp", raw_offsets, drop)
        n -= len(drop)
    _raw_to_npy(raw_offsets, os.path.join(job_dir, "items.offsets.tmp.npy"), n + 1)
    os.remove(raw_offsets)
    with open(path + ".tmp", "rb+") as f:
        os.fsync(f.fileno())
    os.replace(os.path.join(job_dir, "items.offsets.tmp.npy"), os.path.join(job_dir, "items.offsets.npy"))
    os.replace(path + ".tmp", path)
    return {"items": n, "duplicates": len(drop)}


def _id_hash(item_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest(), "little")


def _repeated(hashes: array.array, jsonl: str) -> set[int]:
    """Line numbers whose id an earlier line has. The hashes are sorted in place (no copy); only
    when two are equal is the listing read again, comparing the ids behind those hashes."""
    h = np.frombuffer(hashes, dtype=np.uint64)
    h.sort()
    repeated = set(h[1:][h[1:] == h[:-1]].tolist())
    drop, first = set(), set()
    if repeated:
        with open(jsonl, "rb") as f:
            for i, line in enumerate(f):
                item_id = json.loads(line)["id"]
                if _id_hash(item_id) in repeated:
                    if item_id in first:
                        drop.add(i)
                    else:
                        first.add(item_id)
    return drop


def _drop_lines(jsonl: str, raw_offsets: str, drop: set[int]) -> None:
    offsets = np.fromfile(raw_offsets, dtype="<u8")
    end = 0
    with open(jsonl, "rb") as src, open(jsonl + ".dedup", "wb") as dst, open(raw_offsets + ".dedup", "wb") as o:
        o.write(struct.pack("<Q", 0))
        for i in range(len(offsets) - 1):
            line = src.read(int(offsets[i + 1] - offsets[i]))
            if i not in drop:
                dst.write(line)
                end += len(line)
                o.write(struct.pack("<Q", end))
    os.replace(jsonl + ".dedup", jsonl)
    os.replace(raw_offsets + ".dedup", raw_offsets)


def _raw_to_npy(raw: str, npy: str, count: int) -> None:
    """A file of little-endian uint64 -> the same as a .npy file, copied in blocks."""
    with open(raw, "rb") as src, open(npy, "wb") as dst:
        np.lib.format.write_array_header_1_0(dst, {"descr": "<u8", "fortran_order": False, "shape": (count,)})
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())


# ------------------------------------------------------------------------------------- selection
SELECTION = "selection.npy"  # in the job folder: the frozen selection (sorted id hashes)


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes of a .npy file (for an atomic write)."""
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def read_selection(path: str) -> np.ndarray:
    """A file of source ids, one per line (``-m pseudolabel.curation``'s ``selection_ids.txt``) -> their
    sorted 64-bit hashes (8 bytes per id whatever the corpus). Raises InputError."""
    try:
        hashes = np.array([_id_hash(line.rstrip("\r\n")) for line in _lines(path) if line.strip()], dtype=np.uint64)
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the selection ({type(e).__name__}: {e})") from None
    if not len(hashes):
        raise InputError(f"{path}: the selection lists no ids")
    return np.unique(hashes)


def is_selected(selection: np.ndarray | None, item_id: str) -> bool:
    if selection is None:
        return True
    h = np.uint64(_id_hash(item_id))
    i = int(np.searchsorted(selection, h))
    return i < len(selection) and selection[i] == h


def select_items(items, selection: np.ndarray | None):
    """The items whose id is selected; a streamed URL stays (its members are selected as it is read)."""
    return items if selection is None else (i for i in items if "url" in i or is_selected(selection, i["id"]))


class Listing:
    """Read access to the frozen listing by index range; opens lazily (picklable, per process)."""

    def __init__(self, job_dir: str):
        self.job_dir = job_dir
        self._offsets = None
        self._file = None

    def __getstate__(self):
        return {"job_dir": self.job_dir, "_offsets": None, "_file": None}

    def _open(self):
        if self._offsets is None:
            self._offsets = np.load(os.path.join(self.job_dir, "items.offsets.npy"), mmap_mode="r")
            self._file = open(os.path.join(self.job_dir, "items.jsonl"), "rb")  # noqa: SIM115
        return self._offsets

    def __len__(self) -> int:
        return len(self._open()) - 1

    def read(self, start: int, stop: int) -> list[dict]:
        offsets = self._open()
        lo, hi = int(offsets[start]), int(offsets[stop])
        data = os.pread(self._file.fileno(), hi - lo, lo)
        return [json.loads(line) for line in data.splitlines()]
