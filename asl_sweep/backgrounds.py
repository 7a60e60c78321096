"""What can stand behind a hand, and how a masked hand is put in front of it.

Training (`config.background`) shows a share of the photos each epoch with the masked hand pasted in
front of a random background, at 50-100% of the frame, anywhere in it. The backgrounds come from a
bank made once per agent: procedural families (plain colours, gradients, noise at several scales,
stripes, blocks of colour, dead-leaves clutter, noise with a photo's spectrum) and random crops of real
photographs that packages ship (scikit-learn's two; where they are installed, the nature photographs of
Debian's `mate-backgrounds` and `plasma-workspace-wallpapers`, and the sample photos of `opencv-doc`: a room,
streets, shop signs, a footballer, fruit, a dog), each with colour jitter (channels shuffled, exposure, white balance, some laid over others). The robustness suite's background changes use families that training never sees
(wood, a bookshelf, foliage, a knitted sweater, plain walls) and a photograph matplotlib ships, so
they measure a background the model has not met. scikit-image's sample images are left alone:
they are reserved for acceptance testing.

All arrays are float32 RGB 0..255; masks are float32 0..1 (soft at their edges).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from scipy import ndimage

MIN_SCALE = 0.5  # the hand at 50-100% of the frame when pasted
PHOTO_SIDE = 480  # wallpapers are read at this short side: a 10% crop still has 48 pixels
PLASMA = "/usr/share/wallpapers/{}/contents/images/2560x1600.jpg"
OPENCV = "/usr/share/doc/opencv-doc/examples/{}"  # OpenCV's sample photos: a room, streets, people, fruit, a dog
# (package, path): a Python package's file relative to its root, or a Debian package's absolute path
TRAINING_PHOTOS = (("sklearn", "datasets/images/china.jpg"), ("sklearn", "datasets/images/flower.jpg"),
                   *(("mate-backgrounds", f"/usr/share/backgrounds/mate/nature/{name}.jpg") for name in (
                       "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird",
                       "RainDrops", "Storm", "TwoWings", "Wood", "YellowFlower")),
                   *(("plasma-workspace-wallpapers", PLASMA.format(name)) for name in (
                       "BytheWater", "ColdRipple", "ColorfulCups", "EveningGlow", "FallenLeaf", "Grey",
                       "Kite", "OneStandsOut", "Path", "summer_1am")),
                   *(("opencv-doc", OPENCV.format(name)) for name in (
                       "alphamat/input_images/plant.jpg", "data/aero1.jpg", "data/aloeL.jpg", "data/apple.jpg",
                       "data/baboon.jpg", "data/board.jpg", "data/building.jpg", "data/butterfly.jpg",
                       "data/chicky_512.png", "data/ela_original.jpg", "data/fruits.jpg", "data/graf1.png",
                       "data/home.jpg", "data/leuvenA.jpg", "data/licenseplate_motion.jpg", "data/messi5.jpg",
                       "data/orange.jpg", "data/rubberwhale1.png", "data/smarties.png", "data/squirrel_cls.jpg",
                       "data/starry_night.jpg", "data/stuff.jpg", "hfs/data/000.jpg", "hfs/data/001.jpg",
                       "hfs/data/002.jpg", *(f"text/scenetext0{i}.jpg" for i in range(1, 7)))))
SUITE_PHOTOS = (("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),)
Family = Callable[[int, int, np.random.Generator], np.ndarray]
log = logging.getLogger(__name__)


def _path(package: str, relative: str) -> Path:
    if relative.startswith("/"):
        return Path(relative)
    import importlib

    return Path(importlib.import_module(package).__file__).parent / relative


@functools.cache
def photo(package: str, relative: str) -> np.ndarray:
    """A photograph shipped by an installed package, RGB uint8 (read once per process). A wallpaper (short
    side over twice PHOTO_SIDE) is decoded reduced to PHOTO_SIDE; a sample photo (scikit-learn's, the
    suite's) is read as it is, so the suite's scenes do not change."""
    with Image.open(_path(package, relative)) as img:
        wallpaper = min(img.size) > 2 * PHOTO_SIDE
        if wallpaper:
            img.draft("RGB", (PHOTO_SIDE, PHOTO_SIDE))
        img = img.convert("RGB")
        if wallpaper:
            img.thumbnail((PHOTO_SIDE * img.width // min(img.size), PHOTO_SIDE * img.height // min(img.size)))
        return np.asarray(img)


@functools.cache
def available(sources: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The sources installed here; says once which packages would add more."""
    found = tuple(s for s in sources if _path(*s).is_file())
    missing = sorted({package for package, _ in set(sources) - set(found)})
    if missing:
        log.warning("backgrounds: %d of %d photographs found; install %s for the rest", len(found),
                    len(sources), ", ".join(missing))
    if not found:
        raise FileNotFoundError(f"no photograph found for the backgrounds: install {', '.join(missing)}")
    return found


def _grid(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return np.broadcast_to(yy, (n, size, size)), np.broadcast_to(xx, (n, size, size))


def _colours(n: int, rng: np.random.Generator, k: int = 1) -> np.ndarray:
    """Random colours (n, k, 3), from near-black to saturated to near-white."""
    return np.clip(rng.uniform(0, 255, (n, k, 3)) * rng.uniform(0.3, 1.2, (n, k, 1)), 0, 255).astype(np.float32)


def _mix(t: np.ndarray, a: Any, b: Any) -> np.ndarray:
    """Per pixel, colour a where t=0 and b where t=1 (t: (n, s, s); a, b: one colour per image (n, 3), or one
    colour for all (3,))."""
    t = t[..., None]
    return (1 - t) * np.asarray(a, np.float32)[..., None, None, :] + t * np.asarray(b, np.float32)[..., None, None, :]


def _noise(n: int, size: int, rng: np.random.Generator, cells: int, channels: int = 1,
           order: int = 1) -> np.ndarray:
    """Value noise: a random `cells` x `cells` grid enlarged to `size` (order 1: smooth, 0: blocks)."""
    grid = rng.random((n, cells, cells, channels)).astype(np.float32)
    zoom = size / cells
    out = ndimage.zoom(grid, (1, zoom, zoom, 1), order=order, mode="nearest", grid_mode=True)
    return out[:, :size, :size]


def plain(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    c = _colours(n, rng)
    return np.broadcast_to(c[:, :, None, :], (n, size, size, 3)).copy()


def gradient(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid(n, size)
    angle = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min(axis=(1, 2), keepdims=True)) / np.ptp(t, axis=(1, 2), keepdims=True)
    c = _colours(n, rng, 2)
    return _mix(t, c[:, 0], c[:, 1])


def noise(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Noise at several scales: coarse blobs to fine grain, in colour or between two colours."""
    out = np.zeros((n, size, size, 3), np.float32)
    cells = [c for c in (2, 4, 8, 16, 32) if c <= size]
    weights = rng.random((n, len(cells))).astype(np.float32) ** 2
    weights /= weights.sum(axis=1, keepdims=True)
    for k, c in enumerate(cells):
        out += weights[:, k, None, None, None] * _noise(n, size, rng, c, channels=3)
    c = _colours(n, rng, 2)
    two = _mix(out.mean(axis=-1), c[:, 0], c[:, 1])
    colourful = rng.random(n) < 0.5
    return np.where(colourful[:, None, None, None], out * 255, two)


def stripes(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid(n, size)
    angle = rng.uniform(0, np.pi, (n, 1, 1))
    freq = rng.uniform(1.5, size / 4, (n, 1, 1))
    wave = np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 6.3, (n, 1, 1)))
    hard = rng.random((n, 1, 1)) < 0.5
    t = np.where(hard, wave > 0, (wave + 1) / 2).astype(np.float32)
    c = _colours(n, rng, 2)
    return _mix(t, c[:, 0], c[:, 1])


def blocks(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Blocks of colour: a coarse grid of random colours, shifted so the edges fall anywhere."""
    cells = int(rng.integers(2, 7))
    big = _noise(n, size * 2, rng, cells * 2, channels=3, order=0) * 255
    dy, dx = rng.integers(0, size, 2)
    return big[:, dy:dy + size, dx:dx + size] * rng.uniform(0.3, 1.0, (n, 1, 1, 3)).astype(np.float32)


def clutter(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Dead leaves: overlapping rectangles and discs of random colours, sizes from large to small (a
    power law, as objects in a room are): edges and colours anywhere, like a shelf or a desk."""
    yy, xx = _grid(n, size)
    out = plain(n, size, rng)
    for _ in range(40):
        radius = (rng.pareto(1.5, (n, 1, 1)) * 0.04 + 0.02).clip(0.02, 0.5)
        cy, cx = rng.random((n, 1, 1)), rng.random((n, 1, 1))
        aspect = np.exp(rng.normal(0, 1.2, (n, 1, 1)))  # from squat blocks to bars as thin as a finger
        dy, dx = (yy - cy) / (radius * aspect), (xx - cx) * aspect / radius
        disc = rng.random((n, 1, 1)) < 0.5
        inside = np.where(disc, dy ** 2 + dx ** 2 < 1, (np.abs(dy) < 1) & (np.abs(dx) < 1))
        out = np.where(inside[..., None], _colours(n, rng)[:, :, None, :], out)
    return out


def spectrum(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with a natural photo's power spectrum (amplitude ~ 1/f^a, a near 1), each channel its own:
    the statistics of a scene without its objects."""
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    f = np.sqrt(fy ** 2 + fx ** 2)
    f[0, 0] = 1.0
    slope = rng.uniform(0.8, 1.5, (n, 1, 1, 1))
    phase = np.exp(2j * np.pi * rng.random((n, size, size, 3)))
    out = np.real(np.fft.ifft2(phase / f[None, ..., None] ** slope, axes=(1, 2)))
    out -= out.mean(axis=(1, 2), keepdims=True)
    out /= out.std(axis=(1, 2), keepdims=True) + 1e-6
    return np.clip(128 + out * rng.uniform(25, 70, (n, 1, 1, 3)) + rng.uniform(-60, 60, (n, 1, 1, 3)), 0, 255)


def crops(sources: tuple[tuple[str, str], ...]) -> Family:
    """Random crops of photographs: 10-100% of the photo's short side, anywhere, mirrored at random."""
    def family(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
        found = available(sources)
        out = np.empty((n, size, size, 3), np.float32)
        for i in range(n):
            img = photo(*found[int(rng.integers(len(found)))])
            h, w = img.shape[:2]
            side = int(rng.uniform(0.1, 1.0) * min(h, w))
            top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = Image.fromarray(img[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
            out[i] = np.asarray(crop, np.float32)[:, ::-1] if rng.random() < 0.5 else np.asarray(crop, np.float32)
        return out
    return family


TRAINING: dict[str, Family] = {"plain": plain, "gradient": gradient, "noise": noise, "stripes": stripes,
                               "blocks": blocks, "clutter": clutter, "spectrum": spectrum,
                               "photo": crops(TRAINING_PHOTOS)}


def jitter(bg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour jitter of whole backgrounds: the channels shuffled (a photo's shapes in other colours), exposure
    x0.5-1.3, a white-balance shift per channel; a quarter laid over another background of the set."""
    n = len(bg)
    shuffled = np.take_along_axis(bg, np.argsort(rng.random((n, 1, 1, 3)), axis=-1), axis=-1)
    gain = rng.uniform(0.5, 1.3, (n, 1, 1, 1)) * rng.uniform(0.75, 1.25, (n, 1, 1, 3))
    out = shuffled * gain
    over = rng.random(n) < 0.25
    weight = rng.uniform(0.3, 0.7, (int(over.sum()), 1, 1, 1))
    out[over] = weight * out[over] + (1 - weight) * out[rng.permutation(n)[: int(over.sum())]]
    return np.clip(out, 0, 255)


SHARES = {"photo": 3}  # real photographs are what a user's room looks like: three shares, one for the rest


def bank(count: int, size: int, seed: int) -> np.ndarray:
    """`count` training backgrounds at `size`, one share of each training family (SHARES more), jittered."""
    rng = np.random.default_rng([seed, size])
    shares = {name: SHARES.get(name, 1) for name in TRAINING}
    unit = -(-count // sum(shares.values()))
    parts = np.concatenate([family(unit * shares[name], size, rng) for name, family in TRAINING.items()])
    return jitter(parts[rng.permutation(len(parts))[:count]], rng).astype(np.float32)


def place(images: np.ndarray, masks: np.ndarray, scale: np.ndarray, top: np.ndarray,
          left: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each image and its mask shrunk by `scale` (0..1] with its top-left corner at (`top`, `left`) in
    pixels, bilinear; outside the shrunk photo the mask is 0. Vectorized over the batch."""
    n, h, w = images.shape[:3]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    sy = (yy[None] + 0.5 - top[:, None, None]) / scale[:, None, None] - 0.5
    sx = (xx[None] + 0.5 - left[:, None, None]) / scale[:, None, None] - 0.5
    inside = (sy > -0.5) & (sy < h - 0.5) & (sx > -0.5) & (sx < w - 0.5)
    sy, sx = np.clip(sy, 0, h - 1), np.clip(sx, 0, w - 1)
    y0, x0 = np.minimum(sy.astype(np.int64), h - 2), np.minimum(sx.astype(np.int64), w - 2)
    fy, fx = (sy - y0)[..., None], (sx - x0)[..., None]
    b = np.arange(n)[:, None, None]
    both = np.concatenate([images, masks], axis=-1)
    out = ((1 - fy) * ((1 - fx) * both[b, y0, x0] + fx * both[b, y0, x0 + 1])
           + fy * ((1 - fx) * both[b, y0 + 1, x0] + fx * both[b, y0 + 1, x0 + 1]))
    return out[..., :-1], out[..., -1:] * inside[..., None]


def composite(images: np.ndarray, masks: np.ndarray, backgrounds: np.ndarray, rng: np.random.Generator,
              probability: float, min_scale: float = MIN_SCALE) -> np.ndarray:
    """Training batches: each image with chance `probability` becomes its masked hand in front of a
    random background of the bank, at a random scale in [`min_scale`, 1] and position, with the mask's
    edge softened or hardened at random (the hand's outline is never exactly the mask's)."""
    chosen = np.flatnonzero(rng.random(len(images)) < probability)
    out = images.copy()
    if len(chosen) == 0:
        return out
    n, size = len(chosen), images.shape[1]
    scale = rng.uniform(min_scale, 1.0, n).astype(np.float32)
    room = size * (1 - scale)
    hand, alpha = place(images[chosen], masks[chosen], scale, rng.uniform(0, 1, n) * room, rng.uniform(0, 1, n) * room)
    alpha = alpha ** rng.uniform(0.5, 2.0, (n, 1, 1, 1)).astype(np.float32)
    bg = backgrounds[rng.integers(0, len(backgrounds), n)]
    bg = np.where(rng.random((n, 1, 1, 1)) < 0.5, bg, bg[:, :, ::-1])
    out[chosen] = alpha * hand + (1 - alpha) * bg
    return out


def soft(mask: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """A hard mask with a blurred edge, as a camera sees an outline."""
    return ndimage.gaussian_filter(mask.astype(np.float32), sigma)


def _wall(colour: tuple[float, float, float]) -> Family:
    """A plain wall of one colour, lit a little unevenly (a vignette), as a room's wall is."""
    def family(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
        yy, xx = _grid(n, size)
        light = 1 - 0.35 * ((yy - rng.uniform(0.2, 0.8, (n, 1, 1))) ** 2 + (xx - rng.uniform(0.2, 0.8, (n, 1, 1))) ** 2)
        c = np.array(colour, np.float32) * rng.uniform(0.85, 1.15, (n, 1, 1, 1)).astype(np.float32)
        return np.clip(light[..., None] * c, 0, 255)
    return family


def wood(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Wood grain: stretched rings disturbed by noise, in browns."""
    yy, xx = _grid(n, size)
    cx, cy = rng.uniform(-1, 2, (n, 1, 1)), rng.uniform(-3, -1, (n, 1, 1))
    r = np.sqrt((xx - cx) ** 2 * 30 + (yy - cy) ** 2) + 0.15 * _noise(n, size, rng, 4)[..., 0]
    t = (np.sin(2 * np.pi * r * rng.uniform(3, 6, (n, 1, 1))) + 1) / 2
    return _mix(t, (150, 95, 50), (95, 55, 25))


def bookshelf(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Book spines of many colours in rows, dark gaps between the shelves."""
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        row = int(rng.integers(size // 3, size // 2))
        for top in range(0, size, row):
            x = 0
            while x < size:
                width = int(rng.integers(max(2, size // 25), max(3, size // 8)))
                out[i, top:top + row, x:x + width] = rng.uniform(20, 230, 3)
                x += width
            out[i, top:top + max(1, row // 8)] = 25
    return out


def foliage(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Leaves: blobs of greens and yellow-greens at two scales, with dark shade between them."""
    t = 0.6 * _noise(n, size, rng, 6)[..., 0] + 0.4 * _noise(n, size, rng, 16)[..., 0]
    return _mix(np.clip((t - 0.3) * 2.5, 0, 1), (20, 45, 15), (110, 170, 60))


def sweater(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A knitted blue sweater: rows of small V stitches."""
    yy, xx = _grid(n, size)
    stitch = rng.uniform(12, 20, (n, 1, 1))
    v = np.abs(((xx * stitch) % 1) - 0.5) * 2 + ((yy * stitch * 1.5) % 1)
    t = (np.sin(2 * np.pi * v) + 1) / 2
    return _mix(t, (20, 35, 90), (60, 90, 170))


# name -> (what a user meets, a background family): the robustness suite's scenes, none of which training uses
SCENES: dict[str, tuple[str, Family]] = {
    "bg_dark_wall": ("a plain dark wall", _wall((55, 50, 48))),
    "bg_beige_wall": ("a plain beige wall, near skin tones", _wall((215, 190, 155))),
    "bg_wood": ("a wooden door or table", wood),
    "bg_bookshelf": ("a shelf of coloured books", bookshelf),
    "bg_foliage": ("plants, outdoors", foliage),
    "bg_sweater": ("a blue knitted sweater", sweater),
    "bg_photo": ("an everyday photo behind the hand", crops(SUITE_PHOTOS)),
}
SMALL_SCALE = 0.6  # the suite's framing change: the hand at 60% of the frame, off-centre, before a photo


def in_front(img: np.ndarray, mask: np.ndarray, bg: np.ndarray, scale: float = 1.0,
             corner: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """One photo's masked hand (soft edge) in front of `bg`, shrunk to `scale` with the rest of the frame
    placed by `corner` (0..1 of the free room, top and left)."""
    h, w = img.shape[:2]
    hand, alpha = place(img[None].astype(np.float32), soft(mask)[None, ..., None], np.array([scale], np.float32),
                        np.array([corner[0] * h * (1 - scale)]), np.array([corner[1] * w * (1 - scale)]))
    return (alpha * hand + (1 - alpha) * bg[None])[0]
