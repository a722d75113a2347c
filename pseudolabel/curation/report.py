"""What a person looks at after a curation: ``report/report.json`` (counts per decision, cluster
sizes), ``report/cluster_sizes.png`` (histogram), ``report/duplicates.jpg`` (duplicate groups at the
chosen threshold: the kept image first, framed green) and ``report/clusters.jpg`` (random members of
the largest and the smallest clusters). Images are read back through the input layer; members of
streamed tars are not re-streamed for the sheets (their rows say so)."""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from distill.runtime import write_atomic
from pseudolabel.curation.select import DECISIONS, items_of
from pseudolabel.decode import ByteSource, exif_orientation, open_image, upright_rgb
from pseudolabel.inputs import Listing
from pseudolabel.job import JOB_DIR

THUMB = 112
ROWS = 8


def _thumbnail(source, listing, record) -> Image.Image:
    tile = Image.new("RGB", (THUMB, THUMB), (40, 40, 40))
    if record.get("member"):
        ImageDraw.Draw(tile).text((6, THUMB // 2 - 6), "streamed", fill=(200, 200, 200))
        return tile
    try:
        im = open_image(source.read(listing.read(record["row"], record["row"] + 1)[0]))
        w, h = im.size
        im = Image.fromarray(upright_rgb(im, exif_orientation(im), w, h))
    except Exception:  # noqa: BLE001 - a sheet shows what it can
        ImageDraw.Draw(tile).text((6, THUMB // 2 - 6), "unreadable", fill=(200, 80, 80))
        return tile
    im = ImageOps.contain(im, (THUMB, THUMB))
    tile.paste(im, ((THUMB - im.width) // 2, (THUMB - im.height) // 2))
    return tile


def contact_sheet(rows: list[tuple[str, list[int]]], items, source, listing, frame_first: bool) -> Image.Image:
    """One row of thumbnails per (label, image rows); the label above each row."""
    width = max((len(r) for _, r in rows), default=1)
    sheet = Image.new("RGB", (width * (THUMB + 4) + 4, len(rows) * (THUMB + 20) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for y, (label, members) in enumerate(rows):
        top = y * (THUMB + 20) + 4
        draw.text((4, top), label, fill=(0, 0, 0))
        for x, row in enumerate(members):
            left = x * (THUMB + 4) + 4
            sheet.paste(_thumbnail(source, listing, items[row]), (left, top + 14))
            if frame_first and x == 0:
                draw.rectangle((left - 2, top + 12, left + THUMB + 1, top + THUMB + 15), outline=(0, 170, 0), width=2)
    return sheet


def _save(image_or_fig, path: str) -> None:
    import io  # noqa: PLC0415

    buf = io.BytesIO()
    if isinstance(image_or_fig, Image.Image):
        image_or_fig.save(buf, format="JPEG" if path.endswith(".jpg") else "PNG", quality=90)
    else:
        image_or_fig.savefig(buf, format="png", dpi=100)
    write_atomic(path, buf.getvalue())


def histogram(sizes: np.ndarray, path: str, title: str) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(sizes, bins=min(50, max(5, len(sizes) // 4)), color="#4477aa")
    ax.set_xlabel("images per cluster (leaf)")
    ax.set_ylabel("clusters")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _sheet_rows(decision, rep, leaf, seed: int):
    """(duplicate-group rows, cluster rows, cluster labels, sizes, groups, their sizes) of the sheets."""
    kept = np.isin(decision, [DECISIONS.index("selected"), DECISIONS.index("over budget")])
    labels, sizes = np.unique(leaf[kept], return_counts=True)
    dup = np.flatnonzero(rep != np.arange(len(rep)))
    reps, counts = np.unique(rep[dup], return_counts=True)
    largest = np.argsort(-counts, kind="stable")[:ROWS]
    group_rows = [(f"group of {1 + int(c)}", [int(r)] + [int(m) for m in dup[rep[dup] == r][:7]])
                  for r, c in zip(reps[largest], counts[largest])]
    order = np.argsort(-sizes, kind="stable")
    picks = list(order[: ROWS // 2]) + [i for i in order[::-1][: ROWS // 2] if i not in order[: ROWS // 2]]
    rng = np.random.default_rng(seed)
    cluster_rows = [(f"cluster {labels[i]}: {sizes[i]} images",
                     [int(m) for m in rng.permutation(np.flatnonzero(kept & (leaf == labels[i])))[:8]]) for i in picks]
    return group_rows, cluster_rows, labels, sizes, reps, counts


def write_report(out: str, summary: dict, kind: str, hf: dict | None, seed: int = 0) -> dict:
    folder = os.path.join(out, "report")
    os.makedirs(folder, exist_ok=True)
    with np.load(os.path.join(out, "decisions.npz")) as d:
        decision, rep, leaf = d["decision"], d["representative"], d["leaf"]
    group_rows, cluster_rows, labels, sizes, reps, counts = _sheet_rows(decision, rep, leaf, seed)
    shown = {row for _, rows in group_rows + cluster_rows for row in rows}
    items = dict(items_of(out, shown))  # only the records shown: the listing may hold 10^8
    group_rows = [(f"{label}: kept {items[rows[0]]['path'].rsplit('/', 1)[-1][-60:]}", rows) for label, rows in group_rows]
    source, listing = ByteSource(kind, hf), Listing(os.path.join(out, JOB_DIR))
    histogram(sizes, os.path.join(folder, "cluster_sizes.png"), f"{len(labels)} clusters of the {int(sizes.sum())} kept images")
    for name, rows, frame in (("duplicates.jpg", group_rows, True), ("clusters.jpg", cluster_rows, False)):
        if rows:
            _save(contact_sheet(rows, items, source, listing, frame), os.path.join(folder, name))
    report = {**summary, "cluster_sizes": {"clusters": len(labels), "min": int(sizes.min()) if len(sizes) else 0,
                                           "median": float(np.median(sizes)) if len(sizes) else 0.0,
                                           "max": int(sizes.max()) if len(sizes) else 0},
              "duplicate_groups": len(reps), "largest_group": int(counts.max()) + 1 if len(counts) else 0,
              "pictures": [f for f in ("cluster_sizes.png", "duplicates.jpg", "clusters.jpg")
                           if os.path.isfile(os.path.join(folder, f))]}
    write_atomic(os.path.join(folder, "report.json"), json.dumps(report, indent=1).encode())
    source.close()
    return report
