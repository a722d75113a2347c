"""Procedural synthetic RGB-D scenes: exact depth for tests, smoke runs and sanity checks.

Every scene is ray cast on the CPU with analytic ray-primitive intersections, vectorised over all
pixels in numpy, and is a pure function of its seed (same seed -> bit-identical arrays).

Conventions
- World frame: metres, y up, the floor / ground is the plane y = 0.
- Camera frame: x right, y down, looking along +z. ``depth`` is planar depth (the camera-frame z
  of the nearest hit), not the distance along the ray.
- Pixel centres lie at integer coordinates: pixel (row v, column u) looks along
  ``K^-1 [u, v, 1]``, with ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``, square pixels
  (fy = fx, from a random horizontal FOV of 45-90 deg), ``cx = (W - 1) / 2``, ``cy = (H - 1) / 2``.
  Because that ray has camera z = 1, its ray parameter at a hit *is* the depth: computed in
  float64, stored as float32.
- ``valid`` is False where the ray hits nothing (sky) or the hit lies beyond ``MAX_DEPTH``;
  ``depth`` is 0 there.

API
- ``render_scene(seed, height=256, width=256, kind=None, num_objects=None, style="render",
  photos="train") -> SyntheticScene``; ``style="photo"`` is a second image domain over the same
  geometry (photo textures, tinted light, other layouts, camera noise/blur/exposure/JPEG)
- ``target_for(scene, geometry, seed=0) -> (target, space)``: the training target in one of the
  geometries of ``distill.spaces``: ``metric`` (depth), ``uts`` (depth x a random scale) or
  ``utss`` (disparity x a random scale + a random shift, all values > 0); 0 where invalid.
- ``write_dataset(out, num, seed=0, size=(256, 256), geometry="metric")`` and the CLI
  ``python -m distill.data.synthetic --out DIR --num N [--seed S] [--size H W]
  [--geometry metric|uts|utss] [--style render|photo] [--photos train|test|all]``. Layout::

      DIR/dataset.yaml               name, space, geometry, depth_scale, format, ...
      DIR/rgb/<key>.png              8-bit RGB
      DIR/depth/<key>.png            16-bit, value * depth_scale (0.001) = depth (metric: metres);
                                     0 = invalid                       (metric, uts)
      DIR/depth/<key>.npy            float32 disparity, 0 = invalid    (utss: up to scale and
                                     shift it has no unit or range that fixed point could keep)
      DIR/intrinsics/<key>.json      {"fx", "fy", "cx", "cy", "width", "height", "seed"}

  Keys are ``scene_000000`` ...; every file is written to a temporary name and renamed.
- ``benchmark()`` prints rendered images/s; ``contact_sheet(path)`` saves a preview grid
  (``--benchmark`` and ``--contact-sheet PATH`` on the CLI).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from distill.config import ConfigError, parse_cli, run_main
from distill.runtime import atomic_path
from distill.visualisation import colorize

MAX_DEPTH = 40.0  # metres; farther hits are invalid (and fit a 16-bit millimetre PNG)
UTS_SCALE_RANGE = (0.5, 1.6)  # random depth scale of ``uts`` targets; max 64 m still fits 16 bits
GEOMETRIES = ("metric", "uts", "utss")
KINDS = ("room", "outdoor")
_EPS = 1e-6

# Fixed tables: textures vary per scene through random offsets and scales, not tables.
_TAB_RNG = np.random.default_rng(20240531)
_PERM = _TAB_RNG.permutation(256).astype(np.int32)
_LATTICE = _TAB_RNG.random(256).astype(np.float32)


def _periodic_noise(rng, n, exponent, cutoff):
    """Tileable n x n noise texture in [0, 1]: white noise shaped by a power-law spectrum
    (``exponent``) with a Gaussian high-frequency ``cutoff`` (cycles per texel)."""
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n)))
    amp = np.where(f > 0, np.maximum(f, 1e-3) ** -exponent, 0) * np.exp(-((f / cutoff) ** 2))
    x = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * amp).real
    lo, hi = np.percentile(x, [0.5, 99.5])
    return np.clip((x - lo) / (hi - lo), 0, 1).astype(np.float32).ravel()


# Sampling a precomputed texture is several times cheaper than evaluating octaves per pixel.
_TEX = 256  # texels per side; 8 texels per noise unit, so textures repeat every 32 units
_SMOOTH = _periodic_noise(_TAB_RNG, _TEX, 0.0, 0.06)  # blobs about one unit wide
_FRACTAL = _periodic_noise(_TAB_RNG, _TEX, 1.0, 0.35)  # 1/f detail over ~3 octaves
@dataclass
class SyntheticScene:
    """One rendered view. ``pose`` is camera-to-world (4x4, world y up); ``primitives`` are the
    surfaces that were ray cast (each has ``sdf(x, y, z)``), for tests and point-cloud checks."""

    image: np.ndarray  # uint8 (H, W, 3) RGB
    depth: np.ndarray  # float32 (H, W) metres along the optical axis, 0 where invalid
    valid: np.ndarray  # bool (H, W)
    intrinsics: np.ndarray  # float64 (3, 3)
    seed: int
    kind: str = "room"
    pose: np.ndarray = field(default_factory=lambda: np.eye(4))
    primitives: tuple = ()


# ----------------------------------------------------------------------------------- textures
def _lookup(tex, u, v):
    """Bilinear sample of a tileable texture at noise coordinates u, v (float32)."""
    u, v = u * 8, v * 8
    fu, fv = np.floor(u), np.floor(v)
    su, sv = u - fu, v - fv
    i, j = fu.astype(np.intp) & (_TEX - 1), fv.astype(np.intp) & (_TEX - 1)  # intp: fast gathers
    i1, r0 = (i + 1) & (_TEX - 1), j * _TEX
    r1 = ((j + 1) & (_TEX - 1)) * _TEX
    a, b, c, d = tex[r0 + i], tex[r0 + i1], tex[r1 + i], tex[r1 + i1]
    top, bot = a + (b - a) * su, c + (d - c) * su
    return top + (bot - top) * sv


def _noise(u, v):
    """Smooth noise in [0, 1] with features about one unit across."""
    return _lookup(_SMOOTH, u, v)


def _fbm(u, v):
    """Fractal (1/f) noise in [0, 1]: blobs with finer detail."""
    return _lookup(_FRACTAL, u, v)


def _hash01(i, j):
    """A pseudo-random number in [0, 1) per integer cell (tile, brick, plank)."""
    i, j = i.astype(np.intp) & 255, j.astype(np.intp) & 255
    return _LATTICE[_PERM[(_PERM[i] + j) & 255]]


def _photo_albedo(texture, u, v, blur):
    """Bilinear sample of a photo texture, mirrored at its edges so it tiles without seams; one
    unit of u, v spans the texture. Where ``blur`` -> 1 (texels finer than a pixel) the colour
    fades to the texture's mean, like the procedural patterns."""
    _, h, w = texture.shape
    x, y = u * w, v * h
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0

    def mirror(i, n):
        i = i.astype(np.intp) % (2 * n)
        return np.where(i < n, i, 2 * n - 1 - i)

    i0, i1 = mirror(x0, w), mirror(x0 + 1, w)
    r0, r1 = mirror(y0, h) * w, mirror(y0 + 1, h) * w
    out = []
    for channel in texture.reshape(3, -1):
        top = channel[r0 + i0] + (channel[r0 + i1] - channel[r0 + i0]) * fx
        bot = channel[r1 + i0] + (channel[r1 + i1] - channel[r1 + i0]) * fx
        c = top + (bot - top) * fy
        out.append(c + (float(channel.mean()) - c) * blur)
    return out


@dataclass
class Material:
    """A procedural albedo: ``kind`` picks the pattern, mixing colours ``c1``/``c2`` (linear RGB);
    ``scale`` is the pattern period in metres."""

    kind: str
    c1: tuple
    c2: tuple
    scale: float = 0.5
    offset: tuple = (0.0, 0.0)
    texture: np.ndarray | None = None  # kind "photo": (3, h, w) float32 linear RGB, one period

    def albedo(self, u, v, footprint):
        """Colour channels [r, g, b] (3 arrays of M) at surface coordinates u, v (metres);
        ``footprint`` is the pixel size there in metres, used to fade patterns finer than a pixel
        (cheap anti-aliasing). Channels are separate arrays: numpy is slow on (M, 3) broadcasts."""
        u = (u / self.scale + self.offset[0]).astype(np.float32)
        v = (v / self.scale + self.offset[1]).astype(np.float32)
        kind, shade = self.kind, None
        if kind == "photo":
            return _photo_albedo(self.texture, u, v, np.clip(footprint / self.scale * 3 - 0.5, 0, 1))
        if kind == "plain":
            f = _noise(u * 2, v * 2) * 0.35
        elif kind == "checker":
            f = ((np.floor(u) + np.floor(v)).astype(np.intp) & 1).astype(np.float32)
        elif kind == "stripes":
            f = np.clip(np.sin(u * (2 * np.pi)) * 3, -1, 1) * 0.5 + 0.5
        elif kind == "noise":
            f = np.clip((_fbm(u, v) - 0.5) * 2.2 + 0.5, 0, 1)
        elif kind == "wood":  # growth rings around the v axis, warped by noise
            r = np.sqrt(u * u + v * v) * 3 + _noise(u * 1.5, v * 1.5) * 2
            f = (r - np.floor(r)) ** 3
        elif kind in ("tiles", "bricks", "planks"):
            # cells with gaps (grout / mortar); bricks and planks stagger every other row
            aspect = {"tiles": 1.0, "bricks": 0.5, "planks": 0.2}[kind]
            row = np.floor(v / aspect)
            uu = u + 0.5 * (row.astype(np.intp) & 1) if kind != "tiles" else u
            fu, fv = uu - np.floor(uu), v / aspect - row
            gap = 0.03 / aspect if kind != "planks" else 0.01
            f = _hash01(np.floor(uu), row) * 0.6
            if kind == "planks":
                f = f + _noise(u * 0.5, v * 40) * 0.4  # long grain
            shade = ((fu > 0.02) & (fv > gap)).astype(np.float32) * 0.7 + 0.3
        else:
            raise ValueError(f"unknown material {kind!r}")
        fade = np.clip(1.5 - footprint / self.scale * 3, 0, 1).astype(np.float32)
        f = 0.5 + (f - 0.5) * fade if kind != "plain" else f
        if shade is not None:
            shade = 1 - (1 - shade) * fade
            return [(float(a) + float(b - a) * f) * shade for a, b in zip(self.c1, self.c2)]
        return [float(a) + float(b - a) * f for a, b in zip(self.c1, self.c2)]


# --------------------------------------------------------------------------------- primitives
# Each primitive: intersect(o, d) -> ray parameter t of the first hit (inf where none) for rays
# o + t d (o: 3 scalars or arrays, d: 3 arrays, not necessarily unit); surface(x, y, z) ->
# (normal components, texture u, v, material index) at hit points; sdf(x, y, z) for tests.
def _pick(ok, t):
    return np.where(ok, t, np.inf)


def _argmin(arrays):
    """Index of the smallest of a few same-shaped arrays (faster than np.stack + argmin)."""
    best, idx = arrays[0], np.zeros(arrays[0].shape, np.int8)
    for i, a in enumerate(arrays[1:], 1):
        closer = a < best
        best, idx = np.where(closer, a, best), np.where(closer, np.int8(i), idx)
    return idx


@dataclass
class Ground:
    """The plane y = 0 seen from above (outdoor scenes)."""

    material: Material

    def intersect(self, o, d):
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -o[1] / d[1]
        return _pick((d[1] < 0) & (t > _EPS), t)

    def surface(self, x, y, z):
        one, zero = np.ones_like(x), np.zeros_like(x)
        return (zero, one, zero), x, z, 0

    def sdf(self, x, y, z):
        return y


@dataclass
class Room:
    """The inside of the box [-w/2, w/2] x [0, h] x [0, d]; materials: floor, ceiling, walls."""

    size: tuple
    materials: tuple

    def intersect(self, o, d):
        lo, hi = (-self.size[0] / 2, 0.0, 0.0), (self.size[0] / 2, self.size[1], self.size[2])
        t = None
        with np.errstate(divide="ignore", invalid="ignore"):
            for a in range(3):  # exit distance through the nearest of the six walls
                ta = (np.where(d[a] > 0, hi[a], lo[a]) - o[a]) / d[a]
                t = ta if t is None else np.minimum(t, ta)
        return _pick(t > _EPS, t)

    def surface(self, x, y, z):
        w, h, d = self.size
        # hit points lie on a wall, so the nearest wall is the one they are within a hair of
        tol = 1e-3 * max(w, h, d)
        floor, ceil = y < tol, y > h - tol
        side = (np.abs(x) > w / 2 - tol) & ~floor & ~ceil
        end = ~(floor | ceil | side)
        zero = np.zeros_like(x)
        n = (np.where(side, -np.sign(x), zero), floor - ceil.astype(x.dtype),
             np.where(end, np.where(z < d / 2, 1, -1).astype(x.dtype), zero))
        u = np.where(side, z, x)
        v = np.where(floor | ceil, z, y)
        part = np.where(floor, 0, np.where(ceil, 1, 2))  # floor, ceiling, walls
        return n, u, v, part

    def sdf(self, x, y, z):  # distance to the nearest wall (>= 0 inside)
        w, h, d = self.size
        return np.minimum.reduce([x + w / 2, w / 2 - x, y, h - y, z, d - z])


@dataclass
class Sphere:
    center: tuple
    radius: float
    material: Material

    def intersect(self, o, d):
        lx, ly, lz = (o[a] - self.center[a] for a in range(3))
        a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
        b = lx * d[0] + ly * d[1] + lz * d[2]
        c = lx * lx + ly * ly + lz * lz - self.radius**2
        disc = b * b - a * c
        with np.errstate(invalid="ignore"):
            t = (-b - np.sqrt(disc)) / a
        return _pick((disc >= 0) & (t > _EPS), t)

    def surface(self, x, y, z):
        n = tuple((p - c) / self.radius for p, c in zip((x, y, z), self.center))
        u = np.arctan2(n[2], n[0]) * self.radius
        return n, u, y, 0

    def sphere(self):  # bounding sphere (centre, radius) for culling
        return self.center, self.radius

    def sdf(self, x, y, z):
        cx, cy, cz = self.center
        return np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) - self.radius


@dataclass
class Cylinder:
    """Vertical cylinder standing on y = 0 around (x, z) = ``base``."""

    base: tuple
    radius: float
    height: float
    material: Material

    def intersect(self, o, d):
        lx, lz = o[0] - self.base[0], o[2] - self.base[1]
        a = d[0] * d[0] + d[2] * d[2]
        b = lx * d[0] + lz * d[2]
        c = lx * lx + lz * lz - self.radius**2
        disc = b * b - a * c
        with np.errstate(divide="ignore", invalid="ignore"):
            ts = (-b - np.sqrt(disc)) / a  # entering the infinite side surface
            ys = o[1] + ts * d[1]
            side = _pick((disc >= 0) & (ts > _EPS) & (ys >= 0) & (ys <= self.height), ts)
            tc = (self.height - o[1]) / d[1]  # top cap (the bottom one rests on the floor)
            cx, cz = lx + tc * d[0], lz + tc * d[2]
            cap = _pick((tc > _EPS) & (cx * cx + cz * cz <= self.radius**2), tc)
        return np.minimum(side, cap)

    def surface(self, x, y, z):
        lx, lz = x - self.base[0], z - self.base[1]
        top = y >= self.height - 1e-3  # float32 hit points: a 1 mm band counts as the cap
        zero = np.zeros_like(x)
        n = (np.where(top, zero, lx / self.radius), top.astype(x.dtype),
             np.where(top, zero, lz / self.radius))
        u = np.where(top, lx, np.arctan2(lz, lx) * self.radius)
        v = np.where(top, lz, y)
        return n, u, v, 0

    def sphere(self):
        return (self.base[0], self.height / 2, self.base[1]), math.hypot(self.radius, self.height / 2)

    def sdf(self, x, y, z):
        r = np.sqrt((x - self.base[0]) ** 2 + (z - self.base[1]) ** 2)
        dr, dy = r - self.radius, np.maximum(y - self.height, -y)
        return np.where((dr > 0) & (dy > 0), np.hypot(dr, dy), np.maximum(dr, dy))


@dataclass
class Box:
    """Box standing on y = 0, centred at (x, z) = ``base``, half sizes ``half``, turned by ``yaw``
    (radians) about the vertical axis."""

    base: tuple
    half: tuple
    yaw: float
    material: Material

    def _local(self, x, z):
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        x, z = x - self.base[0], z - self.base[1]
        return c * x - s * z, s * x + c * z

    def intersect(self, o, d):
        ox, oz = self._local(o[0], o[2])
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        lo = (ox, o[1] - self.half[1], oz)
        ld = (c * d[0] - s * d[2], d[1], s * d[0] + c * d[2])
        tn = tf = None
        with np.errstate(divide="ignore", invalid="ignore"):
            for a in range(3):  # slab test
                t1 = (-self.half[a] - lo[a]) / ld[a]
                t2 = (self.half[a] - lo[a]) / ld[a]
                lo_t, hi_t = np.minimum(t1, t2), np.maximum(t1, t2)
                tn = lo_t if tn is None else np.maximum(tn, lo_t)
                tf = hi_t if tf is None else np.minimum(tf, hi_t)
            return _pick((tn <= tf) & (tn > _EPS), tn)

    def surface(self, x, y, z):
        lx, lz = self._local(x, z)
        ly = y - self.half[1]
        axis = _argmin([-np.abs(p) / h for p, h in zip((lx, ly, lz), self.half)])  # face: max |p|/half
        nl = [np.where(axis == a, np.sign(p), 0.0) for a, p in enumerate((lx, ly, lz))]
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        n = (c * nl[0] + s * nl[2], nl[1], -s * nl[0] + c * nl[2])
        u = np.where(axis == 0, lz, lx)  # planar mapping along the face normal
        v = np.where(axis == 1, lz, y)
        return n, u, v, 0

    def sphere(self):
        return (self.base[0], self.half[1], self.base[1]), math.sqrt(sum(h * h for h in self.half))

    def sdf(self, x, y, z):
        lx, lz = self._local(x, z)
        q = [np.abs(lx) - self.half[0], np.abs(y - self.half[1]) - self.half[1], np.abs(lz) - self.half[2]]
        outside = np.sqrt(sum(np.maximum(a, 0) ** 2 for a in q))
        return outside + np.minimum(np.maximum.reduce(q), 0)


# ----------------------------------------------------------------------------- scene sampling
def _hsv(h, s, v):
    """HSV -> linear RGB (3 floats), the cheap way to draw pleasant colours."""
    return tuple((v - v * s * min(max(min(k, 4 - k), 0), 1)) ** 2.2
                 for k in ((n + h * 6) % 6 for n in (5.0, 3.0, 1.0)))


def _material(rng, kinds, hue=None, sat=(0.3, 0.8), val=(0.5, 0.95), scale=(0.15, 0.6), contrast=0.5):
    h = rng.random() if hue is None else (hue + rng.normal(0, 0.03)) % 1
    s, v = rng.uniform(*sat), rng.uniform(*val)
    c1 = _hsv(h, s, v)
    # second colour: same family, darker, sometimes a complementary hue
    h2 = (h + (0.5 if rng.random() < 0.3 else rng.normal(0, 0.05))) % 1
    c2 = _hsv(h2, min(1.0, s * rng.uniform(0.7, 1.2)), v * (1 - contrast * rng.uniform(0.5, 1)))
    kind, scale = kinds[rng.integers(len(kinds))], float(rng.uniform(*scale))
    return Material(kind, c1, c2, scale, tuple(rng.uniform(0, 100, 2)))


def _rotation(yaw, pitch):
    """Camera-to-world rotation: columns are the camera x (right), y (down), z (forward) axes;
    positive pitch looks down."""
    f = np.array([math.sin(yaw) * math.cos(pitch), -math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
    r = np.array([math.cos(yaw), 0.0, -math.sin(yaw)])
    return np.stack([r, np.cross(r, f), f], axis=1)


def _place_objects(rng, n, cam, bounds, size_scale, dist, yaw, hfov):
    """Draw up to n boxes, spheres and cylinders standing on the floor, inside ``bounds`` (x0, x1,
    z0, z1), mostly in view, not overlapping each other or the camera."""
    objs, foot = [], []
    for _ in range(n * 6):
        if len(objs) == n:
            break
        kind = ("box", "sphere", "cylinder")[np.searchsorted([0.45, 0.7], rng.random())]
        s = size_scale * rng.uniform(0.5, 1.5)
        # position: a distance along a direction inside the horizontal field of view
        ang, r = yaw + rng.uniform(-0.5, 0.5) * hfov, rng.uniform(*dist)
        x, z = float(cam[0] + r * math.sin(ang)), float(cam[2] + r * math.cos(ang))
        if kind == "box":
            half = (s * rng.uniform(0.3, 0.7), s * rng.uniform(0.2, 1.0), s * rng.uniform(0.3, 0.7))
            obj, rad = Box((x, z), half, float(rng.uniform(0, np.pi)), None), math.hypot(half[0], half[2])
        elif kind == "sphere":
            rad = s * rng.uniform(0.25, 0.5)
            obj = Sphere((x, rad, z), rad, None)
        else:
            rad = s * rng.uniform(0.15, 0.4)
            obj = Cylinder((x, z), rad, s * rng.uniform(0.4, 1.8), None)
        inside = bounds[0] + rad < x < bounds[1] - rad and bounds[2] + rad < z < bounds[3] - rad
        clear = math.hypot(x - cam[0], z - cam[2]) > rad + 0.5 and all(
            math.hypot(x - x2, z - z2) > rad + r2 + 0.05 for x2, z2, r2 in foot)
        if inside and clear:
            obj.material = _material(rng, ["plain", "checker", "stripes", "noise", "wood", "plain"],
                                     scale=(0.1 * size_scale, 0.5 * size_scale))
            objs.append(obj)
            foot.append((x, z, rad))
    return objs


@dataclass(frozen=True)
class Layout:
    """The ranges a style draws its layouts from (object counts, camera height and pitch in degrees)."""

    room_objects: tuple = (3, 9)
    room_camera_height: tuple = (1.0, 1.9)
    room_pitch: tuple = (0, 25)
    outdoor_objects: tuple = (4, 13)
    outdoor_camera_height: tuple = (1.2, 2.5)
    outdoor_pitch: tuple = (-3, 12)


RENDER_LAYOUT = Layout()
# Cluttered rooms and streets seen from lower, higher and more tilted viewpoints.
PHOTO_LAYOUT = Layout((6, 13), (0.5, 2.3), (-12, 38), (9, 19), (0.7, 4.0), (-10, 22))


def _sample(rng, kind, num_objects, hfov, layout=RENDER_LAYOUT):
    """Random layout: primitives, camera position, yaw, pitch and lighting."""
    if kind == "room":
        w, h, d = rng.uniform(4, 9), rng.uniform(2.6, 3.6), rng.uniform(5, 12)
        floor = _material(rng, ["planks", "tiles", "checker", "noise"], sat=(0.1, 0.6), scale=(0.3, 1.0))
        ceiling = _material(rng, ["plain"], sat=(0, 0.1), val=(0.8, 0.95))
        walls = _material(rng, ["plain", "plain", "bricks", "stripes", "noise"], sat=(0.05, 0.5),
                          val=(0.6, 0.95), scale=(0.2, 0.8), contrast=0.25)
        cam = np.array([rng.uniform(-0.25, 0.25) * w, rng.uniform(*layout.room_camera_height), rng.uniform(0.3, 1.5)])
        yaw, pitch = rng.uniform(-0.45, 0.45), math.radians(rng.uniform(*layout.room_pitch))
        n = int(rng.integers(*layout.room_objects)) if num_objects is None else num_objects
        objs = _place_objects(rng, n, cam, (-w / 2, w / 2, 0, d), 1.0, (1.5, d), yaw, hfov)
        light = np.array([rng.uniform(-0.3, 0.3) * w, h - 0.2, rng.uniform(0.3, 0.7) * d])
        return [Room((w, h, d), (floor, ceiling, walls))] + objs, cam, yaw, pitch, light
    hue = (0.08, 0.1, 0.25, 0.3, 0.6)[rng.integers(5)]  # earth, sand, grass, grass, slate
    ground = _material(rng, ["noise", "noise", "tiles", "checker", "planks"], hue=hue, sat=(0.1, 0.6),
                       val=(0.3, 0.7), scale=(0.5, 2.0), contrast=0.4)
    cam = np.array([0.0, rng.uniform(*layout.outdoor_camera_height), 0.0])
    yaw, pitch = rng.uniform(-np.pi, np.pi), math.radians(rng.uniform(*layout.outdoor_pitch))
    n = int(rng.integers(*layout.outdoor_objects)) if num_objects is None else num_objects
    objs = _place_objects(rng, n, cam, (-1e3, 1e3, -1e3, 1e3), 2.2, (3, 25), yaw, hfov)
    if num_objects is None:  # a few large far boxes: buildings / walls on the horizon
        for _ in range(int(rng.integers(0, 4))):
            ang, r = yaw + rng.uniform(-0.6, 0.6) * hfov, rng.uniform(26, 36)
            half = (rng.uniform(2, 7), rng.uniform(2, 8), rng.uniform(2, 6))
            mat = _material(rng, ["bricks", "plain", "tiles", "stripes"], sat=(0.05, 0.4), scale=(1.0, 3.0))
            objs.append(Box((r * math.sin(ang), r * math.cos(ang)), half, float(rng.uniform(0, np.pi)), mat))
    el, az = rng.uniform(0.35, 1.1), rng.uniform(-np.pi, np.pi)
    sun = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    return [Ground(ground)] + objs, cam, yaw, pitch, sun


# ------------------------------------------------------------------------ the "photo" style
# A second domain for domain-transfer experiments (``benchmarks/distill_gain.py``): the same
# geometry and exact depth, but images that differ from the renders the way photographs do:
# surfaces textured with crops of real photographs, tinted light, other layouts, and a camera
# (exposure, white balance, vignetting, sensor noise, defocus blur, JPEG).
STYLES = ("render", "photo")
PHOTO_SPLITS = ("train", "test", "all")
# scikit-image's bundled photographs (no download) and, where present, the project's shared photos.
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
                  "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text")
SHARED_PHOTOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), *[os.pardir] * 3, "shared", "data", "photos")
# Photos only test scenes are textured with (split "test"); training and validation use the others.
TEST_PHOTOS = ("coffee", "gravel", "moon", "rocket", "demo16", "demo17", "demo18", "demo19", "demo20")
_PHOTO_MAX_SIDE = 384
_photo_cache: dict = {}


def photo_names(split: str) -> list[str]:
    """The photographs of a split: ``train`` (all but TEST_PHOTOS), ``test`` or ``all``."""
    if split not in PHOTO_SPLITS:
        raise ValueError(f"unknown photo split {split!r}; valid: {', '.join(PHOTO_SPLITS)}")
    shared = sorted(os.path.splitext(f)[0] for f in os.listdir(SHARED_PHOTOS)) if os.path.isdir(SHARED_PHOTOS) else []
    names = [*SKIMAGE_PHOTOS, *shared]
    return names if split == "all" else [n for n in names if (n in TEST_PHOTOS) == (split == "test")]


def _load_photo(name: str) -> np.ndarray:
    """uint8 (h, w, 3), at most _PHOTO_MAX_SIDE pixels a side; cached per process."""
    if name not in _photo_cache:
        from PIL import Image

        if name in SKIMAGE_PHOTOS:
            import skimage.data

            image = Image.fromarray(np.asarray(getattr(skimage.data, name)()))
        else:
            image = Image.open(os.path.join(SHARED_PHOTOS, f"{name}.jpg"))
            image.draft("RGB", (_PHOTO_MAX_SIDE, _PHOTO_MAX_SIDE))  # JPEG: decode at a reduced scale
        image = image.convert("RGB")
        image.thumbnail((_PHOTO_MAX_SIDE, _PHOTO_MAX_SIDE))
        _photo_cache[name] = np.asarray(image)
    return _photo_cache[name]


def _photo_material(rng, names, scale):
    """A material textured with a random crop of a random photograph (linear RGB, greys tinted)."""
    import cv2

    photo = _load_photo(names[rng.integers(len(names))])
    h, w = photo.shape[:2]
    ch = max(8, int(rng.uniform(0.2, 0.7) * min(h, w)))
    cw = min(w, max(8, int(ch * rng.uniform(0.6, 1.6))))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = photo[top:top + ch, left:left + cw]
    if max(crop.shape[:2]) > 128:
        f = 128 / max(crop.shape[:2])
        crop = cv2.resize(crop, (max(1, round(cw * f)), max(1, round(ch * f))), interpolation=cv2.INTER_AREA)
    texture = (crop.astype(np.float32) / 255) ** 2.2 * np.asarray(_hsv(rng.random(), rng.uniform(0, 0.3), 1.0), np.float32)
    texture *= rng.uniform(0.5, 1.0)
    return Material("photo", (0, 0, 0), (0, 0, 0), float(rng.uniform(*scale)), tuple(rng.uniform(0, 1, 2)),
                    np.ascontiguousarray(texture.transpose(2, 0, 1)))


def _photo_materials(rng, prims, names, p_photo=0.85):
    """Re-texture most surfaces of a sampled layout with photographs, keeping a pattern's period."""
    for prim in prims:
        if isinstance(prim, Room):
            prim.materials = tuple(_photo_material(rng, names, (1.0, 4.0)) if rng.random() < p_photo else m
                                   for m in prim.materials)
        elif rng.random() < p_photo:
            prim.material = _photo_material(rng, names, (prim.material.scale * 2, prim.material.scale * 8))


def _camera(linear, height, width, rng):
    """What a camera does to the linear image (3, H*W, pixel order): exposure, white balance,
    vignetting, Poisson-Gaussian sensor noise, gamma, defocus blur and JPEG. Returns uint8 (H, W, 3)."""
    import cv2

    gain = math.exp(rng.normal(0, 0.35)) * np.exp(rng.normal(0, 0.08, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r2 = ((xx - (width - 1) / 2) ** 2 + (yy - (height - 1) / 2) ** 2) / ((width / 2) ** 2 + (height / 2) ** 2)
    x = linear * gain[:, None] * (1 - rng.uniform(0, 0.5) * r2.ravel())[None]
    x = np.clip(x, 0, 1)
    shot, read = rng.uniform(0.002, 0.02), rng.uniform(1e-5, 5e-4)
    x = x + np.sqrt(shot * x + read) * rng.standard_normal(x.shape).astype(np.float32)
    image = (np.sqrt(np.clip(x, 0, 1)) * 255 + 0.5).astype(np.uint8).T.reshape(height, width, 3)
    if rng.random() < 0.6:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.4))
    quality = int(rng.integers(20, 75))
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------------------------- rendering
_HORIZON = np.array([0.75, 0.82, 0.9], np.float32)  # sky colour at the horizon, also the fog


def _sky(dx, dy, dz, sun):
    """Sky colour channels for ray directions: blue gradient, sun glow, noise clouds on a plane."""
    inv = 1 / np.sqrt(dx * dx + dy * dy + dz * dz)
    ux, uy, uz = dx * inv, dy * inv, dz * inv
    up = np.sqrt(np.clip(uy, 0, 1))
    glow = np.clip(ux * sun[0] + uy * sun[1] + uz * sun[2], 0, 1) ** 64
    k = 0.8 / np.maximum(uy, 0.02)  # clouds: noise on a plane above the camera
    cloud = np.clip((_fbm(ux * k, uz * k) - 0.45) * 3, 0, 1) * np.clip(uy * 8, 0, 1) * 0.8
    out = []
    for hor, zen, sun_c in zip(_HORIZON, (0.15, 0.3, 0.65), (1.0, 0.9, 0.6)):
        c = float(hor) + float(zen - hor) * up
        out.append(c + (0.95 - c) * cloud + sun_c * glow)
    return out


def _window(prim, K, R, cam, height, width):
    """Pixel rectangle (rows, cols slices) that can see ``prim``: its bounding sphere's box
    projected; None when the object is behind the camera, the whole image when it straddles it."""
    if not hasattr(prim, "sphere"):
        return slice(None), slice(None)
    c, r = prim.sphere()
    corners = np.array(np.meshgrid(*[[c[a] - r, c[a] + r] for a in range(3)])).reshape(3, -1)
    pc = R.T @ (corners - cam[:, None])  # camera frame
    if pc[2].max() <= 0:
        return None
    if pc[2].min() < 1e-3:
        return slice(None), slice(None)
    u, v = K[0, 0] * pc[0] / pc[2] + K[0, 2], K[1, 1] * pc[1] / pc[2] + K[1, 2]
    u0, u1 = max(0, math.floor(u.min())), min(width, math.ceil(u.max()) + 1)
    v0, v1 = max(0, math.floor(v.min())), min(height, math.ceil(v.max()) + 1)
    return (slice(v0, v1), slice(u0, u1)) if u0 < u1 and v0 < v1 else None


def _shadowed(prims, owner, p, light, point):
    """True where points p see no light: the segment to the ``point`` light at ``light``, or the
    ray towards the sun along unit vector ``light``, is blocked by an object. The room and the
    ground cannot occlude points inside / above them, and a point's own primitive (``owner``) is
    convex, so it cannot occlude its own lit points. A cheap per-pixel test against each
    object's bounding sphere (a cone from the point light, a cylinder along the sun direction)
    picks the few rays that get the exact intersection."""
    L = light
    if point:  # e: light -> p, cheap to test against the cone around each object
        e = [p[a] - L[a] for a in range(3)]
        dist = np.sqrt(e[0] * e[0] + e[1] * e[1] + e[2] * e[2])
    else:  # coordinates across (q1, q2) and along (h) the sun direction
        b1 = np.cross(L, [0.0, 0.0, 1.0] if abs(L[2]) < 0.9 else [1.0, 0.0, 0.0])
        b1 /= np.linalg.norm(b1)
        b2 = np.cross(L, b1)
        q1, q2, h = (float(b[0]) * p[0] + float(b[1]) * p[1] + float(b[2]) * p[2] for b in (b1, b2, L))
    blocked = np.zeros(p[0].shape, bool)
    for j, prim in enumerate(prims):
        if not hasattr(prim, "sphere"):
            continue
        c, r = prim.sphere()
        if point:
            ca = [c[a] - L[a] for a in range(3)]
            dc = math.sqrt(sum(x * x for x in ca))
            if dc <= r:  # light inside the bounding sphere: every ray is a candidate
                near = np.flatnonzero(owner != j)
            else:
                cos_t = math.sqrt(1 - (r / dc) ** 2)
                near = np.flatnonzero(((e[0] * ca[0] + e[1] * ca[1] + e[2] * ca[2]) >= (cos_t * dc) * dist)
                                      & (dist >= dc - r) & (owner != j))
        else:
            c1, c2, ch = (float(np.dot(b, c)) for b in (b1, b2, L))
            near = np.flatnonzero(((q1 - c1) ** 2 + (q2 - c2) ** 2 <= r * r) & (h <= ch + r) & (owner != j))
        if near.size:
            pn = tuple(a[near] for a in p)
            if point:
                ln, tmax = tuple(L[a] - pn[a] for a in range(3)), 1.0
            else:
                ln, tmax = tuple(np.full_like(pn[0], L[a]) for a in range(3)), np.inf
            t = prim.intersect(pn, ln)
            blocked[near[t < tmax]] = True
    return blocked


def _primary_rays(prims, K, R, cam, height: int, width: int):
    """Cast the primary rays R K^-1 [u, v, 1] (camera z = 1, so the ray parameter is planar depth):
    flat (t, index of the primitive hit or -1, ray directions)."""
    fx = K[0, 0]
    xs = (np.arange(width) - K[0, 2]) / fx
    ys = (np.arange(height) - K[1, 2]) / fx
    d = [R[a, 0] * xs[None, :] + R[a, 1] * ys[:, None] + R[a, 2] for a in range(3)]  # (H, W)
    o = tuple(float(c) for c in cam)
    t = np.full((height, width), np.inf)
    hit = np.full((height, width), -1, np.int16)
    for k, prim in enumerate(prims):
        win = _window(prim, K, R, cam, height, width)  # only test pixels that can see it
        if win is None:
            continue
        tk = prim.intersect(o, tuple(a[win] for a in d))
        tw = t[win]
        closer = tk < tw
        tw[closer] = tk[closer]
        hit[win][closer] = k
    return t.ravel(), hit.ravel(), [a.ravel() for a in d]


def _surfaces(prims, bounds, p, dh, ts, dist, fx: float):
    """Normals and albedo (channels first) of the hit points, each primitive on its contiguous slice."""
    n = [np.empty_like(ts) for _ in range(3)]
    alb = np.empty((3, ts.size), np.float32)  # channels first: see Material.albedo
    for k, prim in enumerate(prims):
        sl = slice(bounds[k], bounds[k + 1])
        if bounds[k] == bounds[k + 1]:
            continue
        nk, u, v, part = prim.surface(p[0][sl], p[1][sl], p[2][sl])
        for a in range(3):
            n[a][sl] = nk[a]
        cos_view = np.abs(nk[0] * dh[0][sl] + nk[1] * dh[1][sl] + nk[2] * dh[2][sl]) * ts[sl] / dist[sl]
        footprint = dist[sl] / fx / np.maximum(cos_view, 0.15)
        if isinstance(part, int):
            for c, ch in enumerate(prim.material.albedo(u, v, footprint)):
                alb[c][sl] = ch
        else:  # the room: floor, ceiling and walls have their own materials
            for m, mat in enumerate(prim.materials):
                sel = np.flatnonzero(part == m)
                if sel.size:
                    for c, ch in enumerate(mat.albedo(u[sel], v[sel], footprint[sel])):
                        alb[c][sl][sel] = ch
    return n, alb


def _light(kind: str, light, prims, owner, p, n, alb, dist, style_rng):
    """Direct light with cast shadows plus ambient, on the albedo; photo style: a tinted light."""
    if kind == "room":  # point light with quadratic falloff, a little ambient
        lx, ly, lz = light[0] - p[0], light[1] - p[1], light[2] - p[2]
        l2 = lx * lx + ly * ly + lz * lz
        direct = np.maximum(n[0] * lx + n[1] * ly + n[2] * lz, 0) / np.sqrt(l2) * (2.2 / (1 + 0.04 * l2))
        amb = 0.22 + 0.06 * n[1]
    else:  # sun, and a sky ambient that is brighter on upward faces
        direct = np.maximum(n[0] * light[0] + n[1] * light[1] + n[2] * light[2], 0) * 1.1
        amb = 0.32 + 0.12 * n[1]
    lit = np.flatnonzero(direct > 0)
    if lit.size and len(prims) > 1:  # cast shadows, from points lifted off the surface
        lifted = tuple(p[a][lit] + 1e-3 * n[a][lit] for a in range(3))
        direct[lit[_shadowed(prims, owner[lit], lifted, light, kind == "room")]] = 0
    if style_rng is not None:  # tinted light (warm lamps, cool daylight) of another strength, another ambient
        tint = np.asarray(_hsv(style_rng.uniform(0.0, 0.7), style_rng.uniform(0, 0.35), 1.0), np.float32)
        tint *= style_rng.uniform(0.6, 1.6)
        amb = amb * style_rng.uniform(0.4, 1.8)
        img = alb * (amb + direct * tint[:, None])
    else:
        img = alb * (amb + direct)
    if kind == "outdoor":  # aerial perspective: fade to the horizon colour with distance
        img += (_HORIZON[:, None] - img) * (1 - np.exp(-dist / 60))
    return img


def _to_image(sky, img, order, height: int, width: int, style_rng) -> np.ndarray:
    """Sky and shaded pixels back to pixel order: the photo style through its camera model, the
    render style gamma-2 encoded."""
    if style_rng is not None:
        linear = np.empty((3, height * width), np.float32)
        for c in range(3):
            linear[c][order] = np.concatenate([sky[c], img[c]])
        return _camera(linear, height, width, style_rng)
    image = np.empty((3, height * width), np.uint8)
    for c in range(3):
        image[c][order] = np.sqrt(np.clip(np.concatenate([sky[c], img[c]]), 0, 1)) * 255 + 0.5
    return np.ascontiguousarray(image.T)


def render_scene(seed: int, height: int = 256, width: int = 256, kind: str | None = None,
                 num_objects: int | None = None, style: str = "render", photos: str = "train") -> SyntheticScene:
    """Render scene ``seed``: a ``room`` (floor, walls, ceiling, point light) or an ``outdoor``
    ground plane under a sky (sun light, far buildings), with boxes, spheres and cylinders standing
    on the floor. ``kind`` and ``num_objects`` override the random choices (``num_objects=0``
    leaves only the room / ground plane). ``style="photo"`` renders the photo domain (see above),
    its textures cropped from the ``photos`` split (``train``, ``test``, ``all``)."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; valid: {', '.join(STYLES)}")
    photo = style == "photo"
    rng = np.random.default_rng(seed)
    style_rng = np.random.default_rng([seed, 1]) if photo else None  # textures, light, camera
    if kind is None:
        kind = KINDS[int(rng.random() < (0.5 if photo else 0.4))]
    if kind not in KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; valid: {', '.join(KINDS)}")
    hfov = math.radians(rng.uniform(45, 90))
    fx = (width / 2) / math.tan(hfov / 2)
    K = np.array([[fx, 0, (width - 1) / 2], [0, fx, (height - 1) / 2], [0, 0, 1.0]])
    prims, cam, yaw, pitch, light = _sample(rng, kind, num_objects, hfov, PHOTO_LAYOUT if photo else RENDER_LAYOUT)
    if photo:
        _photo_materials(style_rng, prims, photo_names(photos))
    light = [float(c) for c in light]  # python floats keep float32 shading in float32
    R = _rotation(yaw, pitch)
    t, hit, d = _primary_rays(prims, K, R, cam, height, width)
    valid = np.isfinite(t) & (t <= MAX_DEPTH)
    depth = np.where(valid, t, 0).astype(np.float32)

    # Shading in float32, on pixels sorted by the primitive they hit (sky first), so that each
    # primitive owns a contiguous slice: no per-primitive gathers and scatters.
    order = np.argsort(hit, kind="stable")
    owner = hit[order]
    bounds = np.searchsorted(owner, np.arange(len(prims) + 1)) - np.searchsorted(owner, 0)
    n_sky = int(np.searchsorted(owner, 0))
    owner, ds = owner[n_sky:], [a[order].astype(np.float32) for a in d]
    ts, dh = t[order][n_sky:].astype(np.float32), [a[n_sky:] for a in ds]
    o = tuple(float(c) for c in cam)
    p = [o[a] + ts * dh[a] for a in range(3)]
    dist = ts * np.sqrt(dh[0] * dh[0] + dh[1] * dh[1] + dh[2] * dh[2])
    n, alb = _surfaces(prims, bounds, p, dh, ts, dist, fx)
    img = _light(kind, light, prims, owner, p, n, alb, dist, style_rng)
    sky = _sky(*(a[:n_sky] for a in ds), light) if n_sky else [np.empty(0, np.float32)] * 3
    image = _to_image(sky, img, order, height, width, style_rng)
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = R, cam
    return SyntheticScene(image.reshape(height, width, 3), depth.reshape(height, width),
                          valid.reshape(height, width), K, int(seed), kind, pose, tuple(prims))


# ------------------------------------------------------------------------------- geometries
def target_for(scene: SyntheticScene, geometry: str, seed: int = 0) -> tuple[np.ndarray, str]:
    """Return ``(target, space)``: float32 (H, W), 0 where invalid, for ``geometry``
    ``metric`` -> (depth, 'depth'); ``uts`` -> (s * depth, 'depth') with s log-uniform in
    UTS_SCALE_RANGE; ``utss`` -> (s / depth + b, 'disparity') with s > 0 log-uniform and
    0 <= b <= s * median(1 / depth), so valid values stay > 0. s and b come from ``seed``."""
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown geometry {geometry!r}; valid: {', '.join(GEOMETRIES)}")
    if geometry == "metric":
        return scene.depth.copy(), "depth"
    rng = np.random.default_rng(seed)
    depth, valid = scene.depth.astype(np.float64), scene.valid
    if geometry == "uts":
        s = math.exp(rng.uniform(*np.log(UTS_SCALE_RANGE)))
        return np.where(valid, depth * s, 0).astype(np.float32), "depth"
    disp = np.where(valid, 1 / np.where(valid, depth, 1), 0)
    s = math.exp(rng.uniform(math.log(0.1), math.log(10)))
    b = rng.uniform(0, 1) * s * (float(np.median(disp[valid])) if valid.any() else 1.0)
    return np.where(valid, s * disp + b, 0).astype(np.float32), "disparity"


def scene_seed(seed: int, index: int) -> int:
    """The scene seed of sample ``index`` of a dataset with ``seed`` (disjoint across seeds)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class SyntheticReader(torch.utils.data.Dataset):
    """``num`` scenes rendered on the fly as ``Sample``s (the same scenes ``write_dataset`` writes
    with the same seed and size): metric depth, depth up to scale (uts) or disparity up to scale and
    shift (utss), with intrinsics. No disk, deterministic, fast enough to feed a tiny model."""

    def __init__(self, num: int = 1000, seed: int = 0, height: int = 256, width: int = 256,
                 geometry: str = "metric", kind: str | None = None, name: str = "synthetic",
                 style: str = "render", photos: str = "train"):
        if geometry not in GEOMETRIES:
            raise ValueError(f"unknown geometry {geometry!r}; valid: {', '.join(GEOMETRIES)}")
        if style not in STYLES:
            raise ValueError(f"unknown style {style!r}; valid: {', '.join(STYLES)}")
        photo_names(photos)  # checks the split
        self.num, self.seed, self.size, self.geometry, self.kind, self.name = num, seed, (height, width), geometry, kind, name
        self.style, self.photos = style, photos

    def __len__(self):
        return self.num

    def __getitem__(self, index: int):
        from distill.data.sample import Sample

        if not 0 <= index < self.num:
            raise IndexError(f"{self.name}: index {index} out of range [0, {self.num})")
        s = scene_seed(self.seed, index)
        scene = render_scene(s, *self.size, kind=self.kind, style=self.style, photos=self.photos)
        target, space = target_for(scene, self.geometry, s)
        return Sample(scene.image, target, scene.valid.copy(), space, self.geometry, self.name,
                      f"{self.name}_{self.seed}_{index:07d}", intrinsics=scene.intrinsics)


# ---------------------------------------------------------------------------------- writing
def _atomic(path, write):
    """Write via ``write(file)`` to a temporary name, then rename: readers never see half files."""
    with atomic_path(path, fsync=False) as tmp, open(tmp, "wb") as f:
        write(f)


def _save_png(path, array):
    from PIL import Image

    _atomic(path, lambda f: Image.fromarray(array).save(f, format="PNG"))


def write_dataset(out: str, num: int, seed: int = 0, size: tuple = (256, 256),
                  geometry: str = "metric", style: str = "render", photos: str = "train") -> None:
    """Write ``num`` samples to ``out`` in the layout of the module docstring; ``dataset.yaml``
    comes last, so its presence means the folder is complete. Sample i uses the scene seed drawn
    from SeedSequence([seed, i]) (saved in its intrinsics JSON), so datasets with different seeds
    do not overlap."""
    import yaml

    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown geometry {geometry!r}; valid: {', '.join(GEOMETRIES)}")
    for sub in ("rgb", "depth", "intrinsics"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    if os.path.exists(os.path.join(out, "dataset.yaml")):  # incomplete until rewritten below
        os.remove(os.path.join(out, "dataset.yaml"))
    for i in range(num):
        key = f"scene_{i:06d}"
        seed_i = scene_seed(seed, i)
        scene = render_scene(seed_i, *size, style=style, photos=photos)
        target, space = target_for(scene, geometry, seed_i)
        _save_png(os.path.join(out, "rgb", f"{key}.png"), scene.image)
        if geometry == "utss":
            _atomic(os.path.join(out, "depth", f"{key}.npy"), lambda f: np.save(f, target))
        else:  # millimetres; valid pixels are >= 1 so that 0 only means invalid
            mm = np.where(scene.valid, np.clip(np.rint(target * 1000), 1, 65535), 0).astype(np.uint16)
            _save_png(os.path.join(out, "depth", f"{key}.png"), mm)
        K = scene.intrinsics
        meta = {"fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "width": size[1],
                "height": size[0], "seed": seed_i}
        _atomic(os.path.join(out, "intrinsics", f"{key}.json"), lambda f: f.write(json.dumps(meta).encode()))
    utss = geometry == "utss"
    info = {
        "name": "synthetic", "space": "disparity" if utss else "depth", "geometry": geometry,
        "depth_scale": 1.0 if utss else 0.001,
        "format": {"rgb": "rgb/{key}.png", "depth": "depth/{key}.npy" if utss else "depth/{key}.png",
                   "depth_dtype": "float32" if utss else "uint16", "intrinsics": "intrinsics/{key}.json",
                   "invalid_value": 0},
        "num_samples": num, "size": list(size), "seed": seed, "style": style,
    }
    if style == "photo":
        info["photos"] = photo_names(photos)
    text = yaml.safe_dump(info, sort_keys=False).encode()
    _atomic(os.path.join(out, "dataset.yaml"), lambda f: f.write(text))


# ------------------------------------------------------------------------------ previews, CLI
def contact_sheet(path: str, num: int = 16, size: int = 256, seed: int = 0, cols: int = 4,
                  style: str = "render", photos: str = "train") -> None:
    """Save a grid of ``num`` scenes, each image next to its colourised depth."""
    tiles = []
    for i in range(num):
        s = render_scene(seed + i, size, size, style=style, photos=photos)
        tiles.append(np.concatenate([s.image, colorize(s.depth, s.valid)], 1))
    rows = [np.concatenate(tiles[r:r + cols], 1) for r in range(0, num, cols)]
    _save_png(path, np.concatenate(rows, 0))


def benchmark(num: int = 200, size: tuple = (256, 256)) -> float:
    """Render ``num`` scenes in this process (numpy is single-threaded here: one core), print and
    return images/s."""
    render_scene(0, *size)  # warm-up
    start = time.perf_counter()
    for i in range(num):
        render_scene(i, *size)
    rate = num / (time.perf_counter() - start)
    print(f"{rate:.1f} images/s at {size[0]}x{size[1]} ({num} scenes, one process)")
    return rate


@dataclass
class SyntheticCommand:
    out: str | None = None  # output folder
    num: int | None = None  # number of samples
    seed: int = 0  # dataset seed
    size: tuple[int, int] = (256, 256)  # image height and width
    geometry: Literal["metric", "uts", "utss"] = "metric"  # metric: depth in mm; uts: x random scale; utss: disparity
    style: Literal["render", "photo"] = "render"  # photo: the photo domain (photo textures, camera effects)
    photos: Literal["train", "test", "all"] = "train"  # the photographs the photo style textures with
    benchmark: bool = False  # print rendering speed and exit
    contact_sheet: str | None = None  # save a preview grid (PNG) and exit


PROG = "python -m distill.data.synthetic"


def _main(argv=None) -> int:
    args = parse_cli(SyntheticCommand, argv, prog=PROG)
    if args.benchmark:
        benchmark(size=tuple(args.size))
        return 0
    if args.contact_sheet:
        contact_sheet(args.contact_sheet, seed=args.seed, style=args.style, photos=args.photos)
        return 0
    if args.out is None or args.num is None:
        raise ConfigError("--out and --num are required")
    if args.num < 0 or args.seed < 0 or min(args.size) < 1:
        raise ConfigError("--num and --seed must be >= 0, --size H W positive")
    write_dataset(args.out, args.num, args.seed, tuple(args.size), args.geometry, args.style, args.photos)
    print(f"wrote {args.num} samples to {args.out}")
    return 0


def main(argv=None) -> int:
    return run_main(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
