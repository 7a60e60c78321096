import functools
import http.server
import shutil
import struct
import tempfile
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from asl_sweep import data
from asl_sweep.errors import UserError
from tests.conftest import REAL_DATA, make_dataset

ZIP = REAL_DATA.parent / "sign-language-digits.zip"


def make_zip(src: Path, dest: Path, top: str = "Sign-Language-Digits-Dataset-master") -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, f"{top}/{p.relative_to(src)}")
    return dest


def test_locate_prefers_argument_then_env(dataset_dir, tmp_path, monkeypatch):
    other = make_dataset(tmp_path / "other", signers=1)
    monkeypatch.setenv("ASL_SWEEP_DATA_DIR", str(other))
    assert data.locate(dataset_dir) == dataset_dir / "Dataset"
    assert data.locate() == other / "Dataset"
    with pytest.raises(UserError, match="does not exist"):
        data.locate(tmp_path / "nope")


def test_download_over_http_once_then_cached(tmp_path, monkeypatch):
    archive = ZIP if ZIP.is_file() else make_zip(make_dataset(tmp_path / "src"), tmp_path / "ds.zip")
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(archive, served / "master.zip")
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("ASL_SWEEP_DATA_URL", f"http://127.0.0.1:{server.server_address[1]}/master.zip")
        root = data.locate()
        again = data.locate()
    finally:
        server.shutdown()
    assert root == again and root.name == "Dataset" and data.list_images(root)
    assert len(requests) == 1


def test_download_via_file_url(tmp_path, monkeypatch):
    archive = make_zip(make_dataset(tmp_path / "src", signers=2), tmp_path / "ds.zip")
    monkeypatch.setenv("ASL_SWEEP_DATA_URL", archive.as_uri())
    root = data.locate()
    assert len(data.list_images(root)) == 20


def test_zip_slip_is_rejected(tmp_path, monkeypatch):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("Dataset/0/IMG_1.png", b"x")
        zf.writestr("../../escaped.txt", b"owned")
    monkeypatch.setenv("ASL_SWEEP_DATA_URL", evil.as_uri())
    with pytest.raises(UserError, match="escapes the target"):
        data.locate()
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (data.cache_dir() / "sign-language-digits").exists()


def test_bad_archive_and_bad_layout(tmp_path, monkeypatch):
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    monkeypatch.setenv("ASL_SWEEP_DATA_URL", (tmp_path / "junk.zip").as_uri())
    with pytest.raises(UserError, match="not a valid zip"):
        data.locate()
    flat = tmp_path / "flat"
    flat.mkdir()
    with pytest.raises(UserError, match="no dataset layout"):
        data.locate(flat)


def test_bad_files_are_named(dataset_dir):
    root = dataset_dir / "Dataset"
    (root / "3" / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="notes.txt"):
        data.list_images(root)
    (root / "3" / "notes.txt").unlink()
    (root / "4" / "IMG_9999.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(UserError, match="IMG_9999.png"):
        data.load(root, 16)
    (root / "4" / "IMG_9999.png").unlink()
    for p in (root / "7").iterdir():
        p.unlink()
    with pytest.raises(UserError, match="empty"):
        data.list_images(root)
    shutil.rmtree(root / "7")
    with pytest.raises(UserError, match="missing class folder"):
        data.class_root(dataset_dir)


def test_cache_hit_miss_and_invalidation(dataset_dir):
    root = dataset_dir / "Dataset"
    first = data.load(root, 16)
    files = sorted((data.cache_dir() / "arrays").glob("*.npz"))
    assert len(files) == 1 and first.x.shape == (60, 16, 16, 3)
    mtime = files[0].stat().st_mtime_ns
    second = data.load(root, 16)
    assert np.array_equal(first.x, second.x) and files[0].stat().st_mtime_ns == mtime  # hit: nothing rewritten
    data.load(root, 12)  # other preprocessing: another entry
    assert len(list((data.cache_dir() / "arrays").glob("*.npz"))) == 2
    target = root / "5" / sorted(p.name for p in (root / "5").iterdir())[0]
    from PIL import Image

    Image.new("RGB", (24, 24), (255, 0, 0)).save(target)
    changed = data.load(root, 16)
    assert len(list((data.cache_dir() / "arrays").glob("*.npz"))) == 3
    i = changed.paths.index(str(target))
    assert not np.array_equal(changed.x[i], first.x[i])


def test_model_resize_matches_cached_arrays(dataset_dir):
    """Serving a raw image through the model's resize gives exactly the training pixels."""
    root = dataset_dir / "Dataset"
    ds = data.load(root, 16)
    from asl_sweep.preprocessing import resize_layer

    raw = data.decode(Path(ds.paths[0])).astype("float32")[None]
    assert np.allclose(np.asarray(resize_layer(16)(raw))[0], ds.x[0], atol=1e-4)


def test_signer_split_shares_no_signer_and_is_deterministic(tmp_path):
    root = make_dataset(tmp_path / "d", signers=12) / "Dataset"
    ds = data.load(root, 8)
    groups = data.signer_groups(ds.numbers, ds.y)
    assert len(set(groups.tolist())) == 12
    tr, va = data.split(ds, "signer", 0.25, seed=1)
    assert not set(groups[tr]) & set(groups[va])
    assert set(np.bincount(ds.y[va], minlength=10)) == {len(va) // 10}  # stratified: every digit equally
    tr2, va2 = data.split(ds, "signer", 0.25, seed=1)
    assert np.array_equal(va, va2)
    rtr, rva = data.split(ds, "random", 0.25, seed=1)
    assert len(rva) == 30 and not set(rtr) & set(rva)
    seen = [set(groups[data.split(ds, "signer", 0.25, seed=1, fold=f)[1]]) for f in range(4)]
    assert seen[0] == set(groups[va]) and set().union(*seen) == set(groups)  # fold 0 is the default split
    assert all(not seen[i] & seen[j] for i in range(4) for j in range(i + 1, 4))  # folds share no signer


def test_signer_rule_tolerates_retakes_and_gaps():
    labels = np.array([0, 1, 2, 2, 4, 3, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2])
    numbers = np.arange(100, 100 + len(labels))
    groups = data.signer_groups(numbers, labels)
    assert groups.tolist() == [0] * 11 + [1] * 10 + [2] * 2


def test_too_few_signers_is_clear(tmp_path):
    ds = data.load(make_dataset(tmp_path / "d", signers=2) / "Dataset", 8)
    with pytest.raises(UserError, match="signer"):
        data.split(ds, "signer", 0.2, seed=0)


@pytest.mark.realdata
def test_real_data_signers(real_data_dir):
    ds = data.load(data.locate(real_data_dir), 16)
    groups = data.signer_groups(ds.numbers, ds.y)
    sizes = np.bincount(groups)
    assert len(sizes) > 100 and np.median(sizes) == 10  # one signer = one photo of each digit
    tr, va = data.split(ds, "signer", 0.2, seed=0)
    assert not set(groups[tr]) & set(groups[va])
    assert 0.15 < len(va) / len(ds.y) < 0.25


def bomb_png(path: Path, side: int) -> Path:
    """A PNG whose header claims side x side pixels but holds almost no data: a decompression bomb."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _cache_file() -> Path:
    (found,) = (data.cache_dir() / "arrays").glob("*.npz")
    return found


def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(data, "_warned", set())


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "bare_npy", "wrong_shape", "folder"])
def test_damaged_cache_is_rebuilt_not_trusted(dataset_dir, damage, monkeypatch, capsys):
    root = dataset_dir / "Dataset"
    good = data.load(root, 16)
    cache = _cache_file()
    whole = cache.read_bytes()
    _fresh_warnings(monkeypatch)
    if damage == "empty":
        cache.write_bytes(b"")
    elif damage == "truncated":
        cache.write_bytes(whole[: len(whole) // 2])
    elif damage == "garbage":
        cache.write_bytes(b"\x93NUMPY garbage" * 50)
    elif damage == "bare_npy":
        np.save(cache.with_suffix(".tmp.npy"), good.x)
        cache.with_suffix(".tmp.npy").replace(cache)
    elif damage == "wrong_shape":
        np.savez(cache, x=good.x[:5])
    else:
        cache.unlink()
        cache.mkdir()
    again = data.load(root, 16)
    assert np.array_equal(again.x, good.x)
    err = capsys.readouterr().err
    assert str(cache) in err and "Traceback" not in err
    if damage == "folder":  # a folder in the way is left alone: it cannot be read, nor replaced
        assert err.count("asl-sweep: warning:") == 2 and "cannot write the decoded-image cache" in err
    else:  # a damaged file is replaced
        assert err.count("asl-sweep: warning:") == 1
        assert cache.read_bytes() == whole
        assert not [p for p in cache.parent.iterdir() if p.name.endswith(".tmp")]


def test_cache_write_is_atomic(dataset_dir, monkeypatch):
    """A failure while writing (here: the disk fills up) leaves the previous cache file untouched and no temp file."""
    root = dataset_dir / "Dataset"
    data.load(root, 16)
    cache = _cache_file()
    before = cache.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    _fresh_warnings(monkeypatch)
    data.write_cached(cache, np.zeros((1, 16, 16, 3), dtype=np.float32), np.zeros((1, 16, 16, 1), dtype=np.float32))
    assert cache.read_bytes() == before
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]


def test_unwritable_cache_warns_once_and_training_data_still_loads(dataset_dir, monkeypatch, capsys):
    root = dataset_dir / "Dataset"

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    _fresh_warnings(monkeypatch)
    first = data.load(root, 16)
    second = data.load(root, 16)
    assert np.array_equal(first.x, second.x) and first.x.shape == (60, 16, 16, 3)
    err = capsys.readouterr().err
    assert err.count("cannot write the decoded-image cache") == 1 and "Permission denied" in err


@pytest.mark.parametrize("blocked", ["cache", "arrays"])
def test_cache_folder_that_is_a_file_is_one_line_before_decoding(dataset_dir, tmp_path, monkeypatch, blocked):
    if blocked == "cache":
        monkeypatch.setenv("ASL_SWEEP_CACHE_DIR", str(tmp_path / "cache-file"))
        (tmp_path / "cache-file").write_text("not a folder")
    else:  # conftest points ASL_SWEEP_CACHE_DIR at this test's own folder
        data.cache_dir().mkdir(parents=True)
        (data.cache_dir() / "arrays").write_text("not a folder")
    monkeypatch.setattr(data, "decode", lambda p: pytest.fail("decoded before the cache folder was checked"))
    with pytest.raises(UserError, match="cache folder .*ASL_SWEEP_CACHE_DIR.* is not a folder") as info:
        data.load(dataset_dir / "Dataset", 16)
    assert "\n" not in str(info.value)
    if blocked == "cache":
        with pytest.raises(UserError, match="is not a folder"):
            data.locate()  # the download target lives in the same cache folder


def test_data_folder_faults_are_named(dataset_dir, tmp_path):
    root = dataset_dir / "Dataset"
    (root / "2" / "IMG_5000.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(UserError, match="broken symbolic link in dataset: .*IMG_5000.png"):
        data.list_images(root)
    (root / "2" / "IMG_5000.png").unlink()
    (root / "2" / "IMG_5001.png").mkdir()
    with pytest.raises(UserError, match="not an image file in dataset: .*IMG_5001.png"):
        data.list_images(root)
    (root / "2" / "IMG_5001.png").rmdir()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(UserError, match=r"data directory \(--data-dir\) is a file"):
        data.locate(a_file)


@pytest.mark.parametrize("side", [20_000, 10_000])  # over Pillow's hard limit, and over its warning limit
def test_decompression_bomb_is_refused_from_its_header(dataset_dir, side):
    root = dataset_dir / "Dataset"
    bomb = bomb_png(root / "6" / "IMG_7777.png", side)
    with pytest.raises(UserError, match=f"image {bomb} is too large to decode"):
        data.load(root, 16)


def test_image_size_out_of_range_is_refused_before_decoding(dataset_dir, monkeypatch):
    monkeypatch.setattr(data, "decode", lambda p: pytest.fail("decoded before image_size was checked"))
    with pytest.raises(UserError, match=r"'image_size' from --image-size: must be in \[8, 128\], got 0"):
        data.load(dataset_dir / "Dataset", 0)


def test_download_into_an_unwritable_cache_is_one_line(tmp_path, monkeypatch):
    archive = make_zip(make_dataset(tmp_path / "src", signers=1), tmp_path / "ds.zip")
    monkeypatch.setenv("ASL_SWEEP_DATA_URL", archive.as_uri())

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", refused)
    with pytest.raises(UserError, match="cannot download into the cache folder .*Permission denied.*--data-dir"):
        data.locate()


def test_masks_are_decoded_once_with_the_images_and_cached_beside_them(tmp_path, monkeypatch):
    """Each photo's hand mask is made from the full-size photo, resized like it, and read back from the cache."""
    from PIL import Image

    from asl_sweep import masks
    from tests.conftest import hand_photo

    root = tmp_path / "hands"
    for d in range(10):
        (root / str(d)).mkdir(parents=True)
        Image.fromarray(hand_photo(seed=d)[0]).save(root / str(d) / f"IMG_{1000 + d}.png")
    ds = data.load(root, 20)
    assert ds.masks.shape == (10, 20, 20, 1) and ds.masks.dtype == np.float32
    assert 0 <= ds.masks.min() and ds.masks.max() <= 1
    truth = np.asarray(Image.fromarray(hand_photo(seed=0)[1]).resize((20, 20), Image.BILINEAR), np.float32)
    assert np.abs(ds.masks[0, ..., 0] - truth).mean() < 0.1
    monkeypatch.setattr(masks, "masks", lambda images: pytest.fail("the masks were computed again"))
    assert np.array_equal(data.load(root, 20).masks, ds.masks)
    assert data.Dataset.subset(ds, np.array([3])).masks.shape == (1, 20, 20, 1)
