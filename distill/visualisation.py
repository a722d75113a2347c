"""Pictures of depth: colour maps, evaluation strips (input | prediction | ground truth | error),
DA-2K pair overlays and binary PLY point clouds. Used by evaluation, the synthetic generator's
contact sheet and the quickstart summary."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from distill.spaces import point_cloud, to_depth

ERROR_SCALE = 0.5  # abs-rel error mapped to the brightest colour of the error panel
VISUAL_SIZE = 640  # longest side of each panel of a visual strip


def colorize(depth, valid, inverse_range=None):
    """Inverse depth -> RGB uint8 with a small hand-made colormap (near: yellow, far: purple);
    invalid pixels are black. ``inverse_range`` (lo, hi) fixes the inverse-depth range mapped onto
    the colormap (default: this map's own range), so several maps can share one scale."""
    stops = np.array([[0.05, 0.03, 0.2], [0.45, 0.1, 0.55], [0.85, 0.3, 0.35], [0.98, 0.65, 0.2],
                      [0.98, 0.95, 0.6]])
    inv = np.where(valid, 1 / np.where(valid, depth, 1), np.nan)
    if inverse_range is not None:
        lo, hi = inverse_range
    else:
        lo, hi = (np.nanmin(inv), np.nanmax(inv)) if valid.any() else (0, 1)
    x = np.nan_to_num((inv - lo) / max(hi - lo, 1e-9)) * (len(stops) - 1)
    grid = np.arange(len(stops))
    rgb = np.stack([np.interp(x, grid, stops[:, c]) for c in range(3)], -1)
    return (np.where(valid[..., None], rgb, 0) * 255).astype(np.uint8)


def safe_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in key) or "image"


def panel(a: np.ndarray, max_side: int = VISUAL_SIZE) -> np.ndarray:
    import cv2

    h, w = a.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale == 1.0:
        return a
    return cv2.resize(a, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def error_colors(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, vmax: float = ERROR_SCALE) -> np.ndarray:
    """|pred - gt| / gt on ``mask`` -> RGB uint8 (dark blue: exact, red, yellow: >= ``vmax``); black elsewhere."""
    stops = np.array([[0.1, 0.1, 0.45], [0.8, 0.1, 0.1], [1.0, 0.95, 0.3]])
    err = np.where(mask, np.abs(pred - gt) / np.where(mask, gt, 1), 0)
    x = np.clip(err / vmax, 0, 1) * (len(stops) - 1)
    rgb = np.stack([np.interp(x, np.arange(len(stops)), stops[:, c]) for c in range(3)], -1)
    return (np.where(mask[..., None], rgb, 0) * 255).astype(np.uint8)


def depth_strip(image, pred_depth, gt_depth, gt_valid, mask, max_side: int = VISUAL_SIZE) -> np.ndarray:
    """input | prediction | ground truth | error, each panel scaled so its longest side <= max_side."""
    pred_ok = np.isfinite(pred_depth) & (pred_depth > 0)
    ref = gt_valid if gt_valid.any() else pred_ok
    inv = 1.0 / np.where(ref, gt_depth if gt_valid.any() else pred_depth, 1)[ref]
    rng = (float(inv.min()), float(inv.max())) if inv.size else None
    panels = [image, colorize(pred_depth, pred_ok, rng), colorize(gt_depth, gt_valid, rng),
              error_colors(pred_depth, gt_depth, mask)]
    return np.concatenate([panel(p, max_side) for p in panels], axis=1)


def write_ply(path, points: np.ndarray, colors: np.ndarray, comments=()) -> None:
    """Binary little-endian PLY: float x, y, z and uchar red, green, blue per vertex."""
    n = len(points)
    header = ["ply", "format binary_little_endian 1.0", *[f"comment {c}" for c in comments], f"element vertex {n}",
              "property float x", "property float y", "property float z",
              "property uchar red", "property uchar green", "property uchar blue", "end_header"]
    vertices = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
    vertices["x"], vertices["y"], vertices["z"] = points[:, 0], points[:, 1], points[:, 2]
    vertices["r"], vertices["g"], vertices["b"] = colors[:, 0], colors[:, 1], colors[:, 2]
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(vertices.tobytes())


def read_ply_header(path) -> tuple[list[str], int]:
    """(header lines, vertex count) of a PLY file."""
    lines = []
    with open(path, "rb") as f:
        while True:
            line = f.readline().decode("ascii").rstrip("\n")
            lines.append(line)
            if line == "end_header" or not line:
                break
    count = next(int(l.split()[-1]) for l in lines if l.startswith("element vertex"))
    return lines, count


def save_depth_visuals(out_dir, sample, pred_depth, gt_depth, gt_valid, mask) -> None:
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = safe_name(sample.key)
    Image.fromarray(depth_strip(sample.image, pred_depth, gt_depth, gt_valid, mask)).save(out / f"{name}.png")
    if sample.intrinsics is not None:
        ok = np.isfinite(pred_depth) & (pred_depth > 0)
        k = np.asarray(sample.intrinsics, dtype=np.float64)
        points = point_cloud(pred_depth, k, ok)
        comment = f"intrinsics fx={k[0, 0]:.4f} fy={k[1, 1]:.4f} cx={k[0, 2]:.4f} cy={k[1, 2]:.4f}; aligned prediction"
        write_ply(out / f"{name}.ply", points, sample.image[ok], comments=[comment])


def save_pair_visuals(out_dir, name, image, pred, output_space, pairs, right) -> None:
    """input (closer point green, farther red; a white frame marks wrongly ordered pairs) | prediction."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    marked = image.copy()
    h, w = image.shape[:2]
    r = max(2, min(h, w) // 100)
    for pair, ok in zip(pairs, right):
        for which in ("point1", "point2"):
            y, x = (int(round(v)) for v in pair[which])
            color = (0, 255, 0) if which == pair["closer_point"] else (255, 0, 0)
            if not ok:
                marked[max(0, y - 2 * r):y + 2 * r + 1, max(0, x - 2 * r):x + 2 * r + 1] = 255
            marked[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1] = color
    depth = np.asarray(to_depth(pred.astype(np.float32), output_space.space))
    panels = [marked, colorize(depth, np.isfinite(depth) & (depth > 0))]
    Image.fromarray(np.concatenate([panel(p) for p in panels], axis=1)).save(out / f"{safe_name(name)}.png")
