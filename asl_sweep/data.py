"""Find (or download) the Sign Language Digits data, decode it once, cache it, split it.

Why each step is the way it is:
- Images are resized with the model's own `Resizing` layer (`preprocessing`), so a saved model fed a raw photo
  sees exactly what training saw (no Pillow-vs-TensorFlow resize skew). Colour stays RGB here;
  grayscale conversion lives in the model for the same reason.
- The cache key hashes every file's bytes plus the preprocessing, so a changed image, a new
  file or another `image_size` can never read a stale cache.
- Validation is grouped by signer: each signer photographed 0..9 in order, so their images carry
  consecutive numbers. Sorting by number, a new signer starts where the digit wraps around
  (drops by 5 or more). Retakes and gaps inside one signer's sequence never drop that far, and
  the rule errs by merging two people into one group, never by splitting one person in two,
  so no person's hand can land on both sides of the split.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import struct
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from asl_sweep import masks as masks_lib
from asl_sweep.config import folds
from asl_sweep.errors import UserError
from asl_sweep.preprocessing import CLASSES, batches_by_shape, preprocess, resize_layer

if TYPE_CHECKING:
    from asl_sweep.config import Config

DEFAULT_URL = "https://github.com/ardamavi/Sign-Language-Digits-Dataset/archive/refs/heads/master.zip"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
CACHE_VERSION = "v2"  # v2: hand masks beside the images
SIGNER_WRAP_DROP = 5
RESIZE_CHUNK = 256  # TensorFlow's antialiased resize slows down badly on very large batches


@dataclass
class Dataset:
    """Decoded images (float32 RGB 0..255, model-resized), their hand masks (float32 0..1, resized the same
    way, one channel), labels, image numbers and paths."""

    x: np.ndarray
    masks: np.ndarray
    y: np.ndarray
    numbers: np.ndarray
    paths: list[str]

    def subset(self, idx: np.ndarray) -> "Dataset":
        return Dataset(self.x[idx], self.masks[idx], self.y[idx], self.numbers[idx], [self.paths[i] for i in idx])


def cache_dir() -> Path:
    """`ASL_SWEEP_CACHE_DIR`, else the user cache directory (XDG on Linux)."""
    env = os.environ.get("ASL_SWEEP_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("asl-sweep"))


def cache_subfolder(name: str) -> Path:
    """`cache_dir()/name`, refused up front (one line) when a file stands where a folder must be."""
    what = "cache folder (ASL_SWEEP_CACHE_DIR)" if os.environ.get("ASL_SWEEP_CACHE_DIR") else "cache folder"
    folder = cache_dir() / name
    check_folder(folder, what)
    return folder


def check_folder(folder: Path, what: str) -> None:
    """Refuse, as one line, a `folder` that cannot be one because it, or the nearest of its parents that
    exists, is a file (`--out some_file/sub`) or a broken link. Callers run it before any work is done."""
    for p in (folder, *folder.parents):
        if p.exists():
            if not p.is_dir():
                raise UserError(f"{what} {folder} is not a folder" + ("" if p == folder else f": {p} is a file"))
            return
        if p.is_symlink():
            raise UserError(f"{what} {folder}: {p} is a broken symbolic link")


def fsync(path: Path) -> None:
    """Flush a file, or a folder's entries (a rename in it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """Write `path` all or nothing: a temporary file in the same folder, flushed to disk, renamed over
    the target, the folder synced; a crash or power cut never leaves a half-written file in its place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync(path.parent)


_warned: set[str] = set()
log = logging.getLogger(__name__)


def warn_once(message: str) -> None:
    """A problem that costs speed, not results (the cache): logged once per process."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def listing(folder: Path) -> list[Path]:
    """A folder's entries, sorted; an unreadable folder is one line naming it."""
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        raise UserError(f"cannot read folder {folder}: {exc.strerror or exc}") from None


def class_root(path: Path) -> Path:
    """The folder that holds `0..9`: `path/Dataset`, `path` itself, or `<top>/Dataset` in an unpacked archive."""
    candidates = [path / "Dataset", path] + [p / "Dataset" for p in listing(path) if p.is_dir()]
    for c in candidates:
        if c.is_dir() and any((c / k).is_dir() for k in CLASSES):
            missing = [k for k in CLASSES if not (c / k).is_dir()]
            if missing:
                raise UserError(f"dataset at {c} is missing class folder(s) {', '.join(missing)}")
            return c
    raise UserError(f"no dataset layout under {path}: expected Dataset/0..9 or 0..9")


def data_folder(given: str | os.PathLike, source: str = "--data-dir") -> Path:
    """A user-given dataset folder, resolved; a missing path or a file is one line naming `source`."""
    path = Path(given).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise UserError(f"data directory ({source}) is a file, not a folder: {path}")
    if not path.is_dir():
        raise UserError(f"data directory ({source}) does not exist: {path}")
    return path


def locate(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the class root: `--data-dir`, else `ASL_SWEEP_DATA_DIR`, else the cache (downloading once)."""
    if data_dir:
        return class_root(data_folder(data_dir))
    if os.environ.get("ASL_SWEEP_DATA_DIR"):
        return class_root(data_folder(os.environ["ASL_SWEEP_DATA_DIR"], "ASL_SWEEP_DATA_DIR"))
    target = cache_subfolder("sign-language-digits")
    if not target.is_dir():
        download(os.environ.get("ASL_SWEEP_DATA_URL", DEFAULT_URL), target)
    return class_root(target)


def safe_extract(archive: Path, dest: Path) -> None:
    """Unpack a zip, refusing any entry that would land outside `dest` (zip-slip) or is a link."""
    dest = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                target = (dest / info.filename).resolve()
                if not target.is_relative_to(dest):
                    raise UserError(f"archive entry escapes the target folder, refusing to unpack: {info.filename}")
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise UserError(f"archive entry is a symbolic link, refusing to unpack: {info.filename}")
            bad = zf.testzip()
            if bad:
                raise UserError(f"archive is corrupt (bad CRC): {bad}")
            zf.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise UserError(f"downloaded file is not a valid zip archive: {archive} ({exc})") from None


def download(url: str, target: Path) -> None:
    """Download the dataset archive with a progress bar, unpack it safely, verify, then move into place."""
    from tqdm import tqdm

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-")
    except OSError as exc:
        raise UserError(f"cannot download into the cache folder {target.parent} ({exc.strerror or exc}); "
                        "set ASL_SWEEP_CACHE_DIR to a writable folder, or pass --data-dir") from None
    with work as tmp:
        archive = Path(tmp) / "dataset.zip"
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, archive.open("wb") as out:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc="downloading dataset") as bar:
                    while chunk := resp.read(1 << 16):
                        out.write(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise UserError(f"could not download dataset from {url}: {getattr(exc, 'reason', exc)}") from None
        unpacked = Path(tmp) / "unpacked"
        try:
            safe_extract(archive, unpacked)
            list_images(class_root(unpacked))
            shutil.move(str(unpacked), str(target))
        except OSError as exc:  # a full disk while unpacking: nothing is moved into place
            raise UserError(f"could not unpack the dataset into {target.parent}: {exc.strerror or exc}") from None


def list_images(root: Path) -> list[tuple[Path, int]]:
    """All (path, label) pairs under `root/0..9`, sorted; empty classes and non-image files are errors."""
    items: list[tuple[Path, int]] = []
    for label, name in enumerate(CLASSES):
        folder = root / name
        if not folder.is_dir():
            raise UserError(f"missing class folder: {folder}")
        files = [p for p in listing(folder) if not p.name.startswith(".")]
        for p in files:
            if p.is_symlink() and not p.exists():
                raise UserError(f"broken symbolic link in dataset: {p} -> {os.readlink(p)}")
            if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
                raise UserError(f"not an image file in dataset: {p}")
        if not files:
            raise UserError(f"class folder is empty: {folder}")
        items.extend((p, label) for p in files)
    return items


def image_number(path: Path) -> int:
    """The capture number in a file name (IMG_1118.JPG -> 1118), or -1 when there is none."""
    found = re.findall(r"\d+", path.stem)
    return int(found[-1]) if found else -1


def decode(path: Path) -> np.ndarray:
    """Decode one image file to an RGB uint8 array; a corrupt file, or one so large it looks like a
    decompression bomb (Pillow's pixel limit, refused from the header before any pixel is decoded),
    is an error naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(f"image {path} is too large to decode: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise UserError(f"cannot decode image {path}: {' '.join(str(exc).split()) or type(exc).__name__}") from None


def resize_batch(images: list[np.ndarray], image_size: int) -> np.ndarray:
    """Resize with the model's own resize layer, one call per distinct input shape (any channel count)."""
    layer = resize_layer(image_size)
    out = np.empty((len(images), image_size, image_size, images[0].shape[-1]), dtype=np.float32)
    for idx, batch in batches_by_shape(images, RESIZE_CHUNK):
        out[idx] = np.asarray(layer(batch))
    return out


def content_key(items: list[tuple[Path, int]], root: Path, image_size: int) -> str:
    """Hash of every file's relative path, label and bytes, plus the preprocessing settings."""
    h = hashlib.blake2b(f"{CACHE_VERSION}|masks={masks_lib.VERSION}|size={image_size}".encode(), digest_size=16)
    for path, label in items:
        h.update(f"|{path.relative_to(root)}|{label}|".encode())
        try:
            h.update(path.read_bytes())
        except OSError as exc:
            raise UserError(f"cannot read image file {path}: {exc.strerror or exc}") from None
    return h.hexdigest()


def read_cached(cache_file: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached decoded images and masks, or None when absent; a damaged file (truncated, empty, garbage,
    a bare `.npy`) or one whose arrays do not fit the dataset is reported once and rebuilt, never trusted."""
    try:
        with np.load(cache_file, allow_pickle=False) as cached:  # a bare .npy array: TypeError (no `with`)
            x, m = cached["x"], cached["masks"]
    except FileNotFoundError:
        return None
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile, zlib.error) as exc:
        warn_once(f"decoded-image cache {cache_file} is damaged ({type(exc).__name__}); rebuilding it")
        return None
    if x.shape != shape or x.dtype != np.float32 or m.shape != shape[:3] + (1,):
        warn_once(f"decoded-image cache {cache_file} holds {x.dtype} {x.shape}, not this dataset's "
                  f"float32 {shape}; rebuilding it")
        return None
    return x, m


def write_cached(cache_file: Path, x: np.ndarray, m: np.ndarray) -> None:
    """Store decoded images atomically; a cache that cannot be written (read-only, full disk) costs
    speed only, so training goes on without it after one warning."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(cache_file) as fh:
            np.savez(fh, x=x, masks=m)
    except OSError as exc:
        warn_once(f"cannot write the decoded-image cache in {cache_file.parent} ({exc.strerror or exc}); "
                  "continuing without it")


def load(root: Path, image_size: int) -> Dataset:
    """Decode all images under `root` at `image_size`, reading/writing the content-keyed cache."""
    from asl_sweep.config import from_mapping

    from_mapping({"image_size": image_size}, source="--image-size")  # the model's own range, before any work
    folder = cache_subfolder("arrays")
    items = list_images(root)
    key = content_key(items, root, image_size)
    paths = [str(p) for p, _ in items]
    y = np.array([label for _, label in items], dtype=np.int64)
    numbers = np.array([image_number(p) for p, _ in items], dtype=np.int64)
    cache_file = folder / f"{key}.npz"
    cached = read_cached(cache_file, (len(items), image_size, image_size, 3))
    if cached is None:
        originals = [decode(p) for p, _ in items]
        cached = (resize_batch(originals, image_size),
                  resize_batch([m[..., None] for m in masks_lib.masks(originals)], image_size))
        write_cached(cache_file, *cached)
    return Dataset(cached[0], cached[1], y, numbers, paths)


def limit_per_class(ds: Dataset, max_per_class: int) -> Dataset:
    """Keep the first `max_per_class` images of each digit by capture number (0 keeps all)."""
    if max_per_class <= 0:
        return ds
    keep = []
    for label in range(len(CLASSES)):
        idx = np.flatnonzero(ds.y == label)
        keep.extend(idx[np.argsort(ds.numbers[idx], kind="stable")][:max_per_class])
    return ds.subset(np.array(sorted(keep)))


def signer_groups(numbers: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Signer id per image: sorted by capture number, a new signer starts where the digit wraps around."""
    if (numbers < 0).any():
        bad = int(np.flatnonzero(numbers < 0)[0])
        raise UserError(f"cannot group by signer: image #{bad} has no capture number in its name; use split=random")
    order = np.argsort(numbers, kind="stable")
    groups = np.empty(len(numbers), dtype=np.int64)
    group, prev = 0, None
    for i in order:
        if prev is not None and labels[i] <= prev - SIGNER_WRAP_DROP:
            group += 1
        groups[i] = group
        prev = labels[i]
    return groups


def split(ds: Dataset, how: str, val_fraction: float, seed: int, fold: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation indices, stratified by digit; grouped by signer unless `how == 'random'`. The signers
    are cut into folds (shuffled by `seed`) and `fold` is the validation one: folds 0, 1, ... of one seed
    share no signer, so a configuration chosen on fold 0 can be checked on signers it never saw."""
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    idx = np.arange(len(ds.y))
    if how == "random":
        try:
            tr, va = train_test_split(idx, test_size=val_fraction, stratify=ds.y, random_state=seed)
        except ValueError as exc:
            raise UserError(f"cannot split {len(idx)} images randomly: {exc}") from None
        return np.sort(tr), np.sort(va)
    groups = signer_groups(ds.numbers, ds.y)
    n_splits = folds(val_fraction)
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise UserError(f"only {n_groups} signer(s) found, need at least {n_splits} for val_fraction={val_fraction}")
    cut = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    tr, va = list(cut.split(idx, ds.y, groups))[fold]
    return np.sort(tr), np.sort(va)


class DataCache:
    """Loads the dataset once per image size, with its splits and preprocessed inputs, and keeps them
    for the process (one per agent): later runs with the same settings start from memory. Each product
    is keyed by the config fields it depends on, and by nothing else."""

    LOADED = ("image_size", "max_per_class")
    SPLIT = (*LOADED, "split", "val_fraction", "seed", "fold")
    INPUT = ("image_size", "color_mode")

    def __init__(self, data_dir: str | None = None) -> None:
        self.data_dir = data_dir
        self._root: Path | None = None
        self._loaded: dict[int, Any] = {}
        self._made: dict[tuple, Any] = {}

    def _once(self, what: str, cfg: Config, fields: tuple[str, ...], make: Callable[[], Any]) -> Any:
        """`make()` the first time `what` is asked for with these values of `fields`, then the kept result."""
        key = (what, *(getattr(cfg, f) for f in fields))
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def get(self, cfg: Config) -> Dataset:
        if self._root is None:
            self._root = locate(self.data_dir)
        if cfg.image_size not in self._loaded:
            self._loaded[cfg.image_size] = load(self._root, cfg.image_size)
        return limit_per_class(self._loaded[cfg.image_size], cfg.max_per_class)

    def split(self, cfg: Config, dataset) -> tuple[Any, Any]:
        """Train/validation indices, computed once per split setting (signer grouping costs ~0.2 s)."""
        return self._once("split", cfg, self.SPLIT,
                          lambda: split(dataset, cfg.split, cfg.val_fraction, cfg.seed, cfg.fold))

    def inputs(self, cfg: Config, dataset):
        """The classifier's input for every image, preprocessed once per setting, not once per batch."""
        return self._once("inputs", cfg, (*self.LOADED, "color_mode"), lambda: preprocess(cfg, dataset.x))

    def suite(self, cfg: Config, dataset: Dataset, va) -> dict[str, Any]:
        """The validation photos under every change of the robustness suite, preprocessed for the
        classifier: built once per split and preprocessing setting (a few seconds), then reused."""
        from asl_sweep import robustness

        return self._once("suite", cfg, (*self.SPLIT, "color_mode"), lambda: robustness.preprocessed_suite(
            cfg, [decode(Path(dataset.paths[i])) for i in va]))

    def bank(self, cfg: Config):
        """The preprocessed backgrounds `background` draws from, made once per input setting (None without it)."""
        from asl_sweep import feed

        if cfg.background <= 0:
            return None
        return self._once("bank", cfg, self.INPUT, lambda: feed.bank(cfg))
