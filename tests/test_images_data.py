"""Image data sets: the fixed digits split, MNIST / Fashion-MNIST from the IDX files, and the
failure paths (corrupt file, missing file, offline, bad mirror) without any network.

The MNIST tests read the original files from ``$FLOWLIB_DATA`` or, when that is unset, from
``../shared/data`` beside the repository; they are skipped when neither exists.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from flowlib import FlowInputError
from flowlib.data import files as data_files
from flowlib.data import images as im

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LOCAL_DATA = Path(os.environ.get("FLOWLIB_DATA") or SHARED_DATA)
HAVE_LOCAL = (LOCAL_DATA / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()
needs_local = pytest.mark.skipif(
    not HAVE_LOCAL,
    reason=f"no local MNIST copy: set FLOWLIB_DATA to a folder with mnist/ and fashion-mnist/ "
    f"(looked in {LOCAL_DATA})",
)

TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Never touch ~/.cache or the network; FLOWLIB_DATA points at the local copy (if any)."""
    monkeypatch.setenv("FLOWLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FLOWLIB_DATA", str(LOCAL_DATA))

    def no_network(url, timeout):
        raise AssertionError(f"a test tried to reach the network: {url}")

    monkeypatch.setattr(data_files, "_urlopen", no_network)
    return tmp_path / "cache"


def _copy_test_split(folder: str, dest: Path) -> Path:
    """Copy the two test-split files of ``folder`` into ``dest/folder``; return that folder."""
    out = dest / folder
    out.mkdir(parents=True, exist_ok=True)
    for name in (TEST_IMAGES, TEST_LABELS):
        shutil.copyfile(LOCAL_DATA / folder / name, out / name)
    return out


# -- digits ------------------------------------------------------------------------------
def test_digits_shapes_levels_and_labels():
    x, y = im.load_digits("train")
    assert x.dtype == torch.uint8 and x.shape[1:] == (1, 8, 8)
    assert y.dtype == torch.int64 and y.shape == (x.shape[0],)
    assert int(x.min()) == 0 and int(x.max()) == im.DIGITS_GREY_LEVELS - 1 == 16
    assert set(y.tolist()) == set(range(10))
    assert im.DATASETS["digits"].grey_levels == 17


def test_digits_split_is_fixed_disjoint_and_stratified():
    split = im.digits_split_indices()
    sizes = {name: len(index) for name, index in split.items()}
    # Pinned: the split must be the same on every machine and version (numpy's PCG64 stream).
    assert sizes == {"train": 1259, "val": 179, "test": 359}
    assert split["test"][:8].tolist() == [4, 13, 20, 28, 30, 31, 37, 38]
    assert split["val"][:8].tolist() == [10, 24, 42, 50, 52, 69, 74, 88]
    every = np.concatenate(list(split.values()))
    assert np.array_equal(np.sort(every), np.arange(1797)), "splits must partition the 1797 digits"
    _, y_all = im.load_digits("all")
    class_sizes = np.bincount(y_all.numpy())
    for name in ("val", "test"):
        x, y = im.load_digits(name)
        assert len(x) == len(split[name])
        # Stratified: each class gives its share, rounded half up.
        share = np.floor(im.DIGITS_SPLIT_FRACTIONS[name] * class_sizes + 0.5)
        assert np.bincount(y.numpy(), minlength=10).tolist() == share.astype(int).tolist()
    x_all, _ = im.load_digits("all")
    x_test, _ = im.load_digits("test")
    assert torch.equal(x_test, x_all[torch.from_numpy(split["test"])])


def test_digits_deterministic_and_caller_owns_the_tensors():
    a, ya = im.load_digits("val")
    a[:] = 0  # must not leak into the next call
    b, yb = im.load_digits("val")
    c, _ = im.load_digits("val")
    assert torch.equal(b, c) and torch.equal(ya, yb) and int(b.max()) == 16
    other = im.digits_split_indices(seed=1)
    assert not np.array_equal(other["test"], im.digits_split_indices()["test"])


def test_digits_bad_split():
    with pytest.raises(FlowInputError, match="load_digits.*'val'"):
        im.load_digits("validation")


# -- MNIST and Fashion-MNIST from the local copy ----------------------------------------
@needs_local
@pytest.mark.parametrize(
    "loader, test_counts, mean",
    [
        (im.load_mnist, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009], 33.79),
        (im.load_fashion_mnist, [1000] * 10, 73.15),
    ],
    ids=["mnist", "fashion-mnist"],
)
def test_test_split(loader, test_counts, mean, isolated_cache):
    x, y = loader("test", download=False)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (10000,) and y.dtype == torch.int64
    assert int(x.min()) == 0 and int(x.max()) == 255
    assert np.bincount(y.numpy(), minlength=10).tolist() == test_counts
    # Plausible images, not shifted bytes: the known mean, background corners, ink in the middle.
    assert abs(x.float().mean().item() - mean) < 0.01
    assert x[:, :, 0, 0].float().mean() < 0.01 and x[:, :, :, 13:15].float().mean() > 70
    assert x.is_contiguous()
    x[0] = 0  # writable memory owned by torch
    assert not isolated_cache.exists(), "reading FLOWLIB_DATA must not write the cache"


@needs_local
def test_mnist_train_split():
    x, y = im.load_images("mnist", "train", download=False)
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8 and y.shape == (60000,)
    assert np.bincount(y.numpy()).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert im.DATASETS["mnist"].grey_levels == im.MNIST_GREY_LEVELS == 256


@needs_local
def test_cache_used_when_flowlib_data_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWLIB_DATA")
    _copy_test_split("fashion-mnist", tmp_path / "root")
    x, y = im.load_fashion_mnist("test", root=tmp_path / "root", download=False)
    assert x.shape == (10000, 1, 28, 28) and int(y.max()) == 9


def test_bad_names():
    with pytest.raises(FlowInputError, match="load_mnist: split must be one of 'train', 'test'"):
        im.load_mnist("val")
    with pytest.raises(FlowInputError, match="fashion-mnist"):
        im.load_images("cifar10")


# -- corrupt and missing files ----------------------------------------------------------
@needs_local
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_cache_file_is_rejected(damage, tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWLIB_DATA")
    folder = _copy_test_split("mnist", tmp_path / "root")
    path = folder / TEST_LABELS
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
    else:
        raw = raw[: len(raw) // 2]
    path.write_bytes(bytes(raw))
    with pytest.raises(im.DatasetCorruptError) as info:
        im.load_mnist("test", root=tmp_path / "root", download=False)
    message = str(info.value)
    assert str(path) in message and TEST_LABELS in message
    assert "ec29112dd5afa0611ce80d1b7f02629c" in message  # what was expected
    assert "Delete it" in message and "FLOWLIB_DATA" in message  # what to do
    assert path.read_bytes() == bytes(raw), "the damaged file is reported, not silently replaced"


@needs_local
def test_corrupt_flowlib_data_copy_says_replace(tmp_path, monkeypatch):
    folder = _copy_test_split("fashion-mnist", tmp_path / "shared")
    (folder / TEST_IMAGES).write_bytes((folder / TEST_IMAGES).read_bytes()[:-100])
    monkeypatch.setenv("FLOWLIB_DATA", str(tmp_path / "shared"))
    with pytest.raises(im.DatasetCorruptError, match="Replace it with an intact copy.*FLOWLIB_DATA"):
        im.load_fashion_mnist("test", download=True)  # a damaged local copy is never bypassed


def _gz_idx(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return gzip.compress(struct.pack(f">{1 + len(dims)}i", magic, *dims) + payload)


@pytest.mark.parametrize(
    "raw, match",
    [
        (_gz_idx(2049, (10000,), bytes(10000))[:-20], "gzip stream is damaged or truncated"),
        (b"not gzip at all", "gzip stream is damaged or truncated"),
        (gzip.compress(b"\x00\x00"), "shorter than the 8-byte header"),
        (_gz_idx(2051, (10000,), bytes(10000)), "magic number 2051, expected 2049"),
        (_gz_idx(2049, (9999,), bytes(9999)), r"shape \(9999,\), expected \(10000,\)"),
        (_gz_idx(2049, (10000,), bytes(9000)), "9000 data bytes, expected exactly 10000"),
        (_gz_idx(2049, (10000,), bytes(10001)), "10001 data bytes, expected exactly 10000"),
        (_gz_idx(2049, (10000,), bytes([12]) * 10000), "label 12 outside 0..9"),
    ],
    ids=["truncated-gzip", "not-gzip", "short-header", "magic", "count", "short", "long", "label"],
)
def test_idx_parser_rejects_inconsistent_files(raw, match):
    spec = im._FILES["mnist"]["test"][1]
    with pytest.raises(im.DatasetCorruptError, match=match):
        im._decode(raw, spec, "some/file.gz")


def test_idx_parser_checks_image_dims():
    spec = im._FILES["mnist"]["test"][0]
    with pytest.raises(im.DatasetCorruptError, match=r"\(10000, 32, 32\), expected \(10000, 28, 28\)"):
        im._decode(_gz_idx(2051, (10000, 32, 32), bytes(10)), spec, "x.gz")
    good = im._decode(_gz_idx(2051, (10000, 28, 28), bytes(10000 * 784)), spec, "x.gz")
    assert good.shape == (10000, 28, 28)


def test_missing_file_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWLIB_DATA", str(tmp_path / "empty"))
    with pytest.raises(im.DatasetNotFoundError) as info:
        im.load_mnist("test", download=False)
    message = str(info.value)
    assert TEST_IMAGES in message and "download=False" in message
    assert "FLOWLIB_DATA" in message and str(tmp_path / "empty") in message
    assert isinstance(info.value, im.DatasetError) and isinstance(info.value, RuntimeError)


# -- downloads, served from local bytes --------------------------------------------------
def _serve(files: dict[str, bytes], calls: list[str], fail_first: bool = False):
    def fake_urlopen(url, timeout):
        calls.append(url)
        if fail_first and url.startswith(im._MIRRORS["mnist"][0]):
            raise urllib.error.URLError("connection refused")
        return io.BytesIO(files[url.rsplit("/", 1)[1]])

    return fake_urlopen


@needs_local
@pytest.mark.parametrize("fail_first", [False, True], ids=["first-mirror", "second-mirror"])
def test_download_verifies_and_caches(fail_first, tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWLIB_DATA")
    files = {name: (LOCAL_DATA / "mnist" / name).read_bytes() for name in (TEST_IMAGES, TEST_LABELS)}
    calls: list[str] = []
    monkeypatch.setattr(data_files, "_urlopen", _serve(files, calls, fail_first))
    x, y = im.load_mnist("test", root=tmp_path / "root")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    folder = tmp_path / "root" / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(files), "no temporary files left"
    assert all((folder / n).read_bytes() == b for n, b in files.items())
    assert len(calls) == (4 if fail_first else 2)
    # Second call: served from the cache, no download.
    calls.clear()
    x2, _ = im.load_mnist("test", root=tmp_path / "root")
    assert calls == [] and torch.equal(x, x2)


def test_download_with_bad_bytes_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWLIB_DATA")
    calls: list[str] = []
    bad = _gz_idx(2051, (10000, 28, 28), bytes(10000 * 784))  # valid IDX, wrong checksum
    monkeypatch.setattr(data_files, "_urlopen", _serve({TEST_IMAGES: bad}, calls))
    with pytest.raises(im.DatasetNotFoundError) as info:
        im.load_fashion_mnist("test", root=tmp_path / "root")
    message = str(info.value)
    assert "MD5" in message and "bef4ecab320f06d8554ea6380940ec79" in message
    assert "FLOWLIB_DATA" in message
    assert len(calls) == len(im._MIRRORS["fashion-mnist"]), "every mirror is tried"
    assert list((tmp_path / "root" / "fashion-mnist").iterdir()) == [], "nothing left in the cache"


def test_offline_download_says_how_to_get_the_files(tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWLIB_DATA")

    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(data_files, "_urlopen", offline)
    with pytest.raises(im.DatasetNotFoundError) as info:
        im.load_mnist("test", root=tmp_path / "root")
    message = str(info.value)
    assert "name resolution" in message and "FLOWLIB_DATA" in message and TEST_IMAGES in message
    assert list((tmp_path / "root" / "mnist").iterdir()) == []


def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWLIB_DATA")

    class Broken(io.BytesIO):
        def read(self, size=-1):
            raise TimeoutError("read timed out")

    monkeypatch.setattr(data_files, "_urlopen", lambda url, timeout: Broken(b""))
    with pytest.raises(im.DatasetNotFoundError, match="read timed out"):
        im.load_mnist("test", root=tmp_path / "root")
    assert list((tmp_path / "root" / "mnist").iterdir()) == []


def test_cache_dir_precedence(tmp_path, monkeypatch):
    assert im.cache_dir(tmp_path / "a") == tmp_path / "a"
    monkeypatch.setenv("FLOWLIB_CACHE", str(tmp_path / "b"))
    assert im.cache_dir() == tmp_path / "b"
    monkeypatch.delenv("FLOWLIB_CACHE")
    assert im.cache_dir() == Path.home() / ".cache" / "flowlib"


# -- padding -----------------------------------------------------------------------------
def test_pad_to_centres_and_keeps_dtype():
    x = torch.arange(2 * 28 * 28, dtype=torch.int64).reshape(2, 1, 28, 28).to(torch.uint8)
    y = im.pad_to(x, 32)
    assert y.shape == (2, 1, 32, 32) and y.dtype == torch.uint8
    assert torch.equal(y[..., 2:30, 2:30], x)
    assert int(y[..., :2, :].sum()) == 0 and int(y[..., :, 30:].sum()) == 0
    odd = im.pad_to(torch.ones(1, 1, 8, 8), (11, 9))
    assert odd.shape == (1, 1, 11, 9) and torch.equal(odd[0, 0, 1:9, 0:8], torch.ones(8, 8))
    assert odd[0, 0, 0].sum() == 0 and odd[0, 0, 9:].sum() == 0 and odd[0, 0, :, 8].sum() == 0
    with pytest.raises(FlowInputError, match="pad_to.*28x28"):
        im.pad_to(x, 16)


def test_old_names_of_the_grey_levels_warn():
    import flowlib.data

    with pytest.warns(DeprecationWarning, match="DIGITS_GREY_LEVELS"):
        assert flowlib.data.DIGITS_LEVELS == 17
    with pytest.warns(DeprecationWarning, match="MNIST_GREY_LEVELS"):
        from flowlib.data import MNIST_LEVELS
    assert MNIST_LEVELS == 256
    with pytest.warns(DeprecationWarning, match="grey_levels"):
        assert im.DATASETS["digits"].levels == 17
    with pytest.raises(AttributeError):
        im.NO_SUCH_NAME  # noqa: B018


# -- unreadable folders and files (issue 12, item 8) ---------------------------------------
# The lectures catch DatasetError to fall back to the digits: a raw PermissionError would pass
# through. The tests run as root here, where chmod does not stop reads: the check then runs in
# a subprocess whose capability bounding set lacks CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (a
# root without them obeys file permissions, as any user does); as a plain user it runs as is.
PERMISSION_CASES = ("data folder", "data file", "cache folder", "cache file", "cache not writable")

_PERMISSION_SCRIPT = r'''
import io, json, os, sys
from pathlib import Path
from flowlib.data import files, images

base = Path(sys.argv[1])
files._urlopen = lambda url, timeout: io.BytesIO(b"never reached")
cases = {
    "data folder": (base / "data", base / "cache0", False),
    "data file": (base / "data1", base / "cache1", False),
    "cache folder": (base / "none", base / "cache2", False),
    "cache file": (base / "none", base / "cache3", False),
    "cache not writable": (base / "none", base / "cache4", True),
}
for case, (data, cache, download) in cases.items():
    os.environ["FLOWLIB_DATA"], os.environ["FLOWLIB_CACHE"] = str(data), str(cache)
    try:
        images.load_mnist("test", download=download)
        said = {"type": None, "mro": [], "message": ""}
    except BaseException as err:
        said = {"type": type(err).__name__, "mro": [c.__name__ for c in type(err).__mro__],
                "message": str(err)}
    print(json.dumps({"case": case, **said}))
'''


def _unreadable_tree(base: Path) -> None:
    """The five cases of _PERMISSION_SCRIPT: a folder or file without permissions in each place."""
    for folder in ("data/mnist", "data1/mnist", "cache2/mnist", "cache3/mnist"):
        (base / folder).mkdir(parents=True)
        for name in (TEST_IMAGES, TEST_LABELS):
            (base / folder / name).write_bytes(b"x" * 16)
    (base / "none").mkdir()
    (base / "cache4").mkdir()
    for folder in ("data/mnist", "cache2/mnist"):
        os.chmod(base / folder, 0)
    for folder in ("data1/mnist", "cache3/mnist"):
        os.chmod(base / folder / TEST_IMAGES, 0)
    os.chmod(base / "cache4", 0o555)


@pytest.fixture(scope="module")
def permission_results(tmp_path_factory):
    """{case: what load_mnist raised} in a process that obeys file permissions."""
    import json
    import subprocess
    import sys

    base = tmp_path_factory.mktemp("permissions")
    _unreadable_tree(base)
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: see the monkeypatched test below")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    run = subprocess.run([*prefix, sys.executable, "-c", _PERMISSION_SCRIPT, str(base)], capture_output=True,
                         text=True, timeout=120, env=env)
    for folder in ("data/mnist", "cache2/mnist", "cache4"):
        os.chmod(base / folder, 0o755)  # so that pytest can delete the tree
    assert run.returncode == 0, run.stderr
    results = {r["case"]: r for r in map(json.loads, run.stdout.splitlines())}
    if os.geteuid() == 0 and results["data file"]["type"] is None:
        pytest.skip("this root process reads files without permission even without DAC capabilities")
    return results


@pytest.mark.parametrize("case", PERMISSION_CASES)
def test_an_unreadable_data_folder_or_file_is_a_dataset_error(case, permission_results):
    said = permission_results[case]
    assert "DatasetError" in said["mro"], f"{case}: {said['type']}: {said['message']}"
    assert "PermissionError" not in said["mro"] and "permission" in said["message"].lower(), said
    where = "FLOWLIB_DATA" if case.startswith("data") else "FLOWLIB_CACHE"
    assert where in said["message"], said["message"]
    assert ("writable" if case == "cache not writable" else "readable") in said["message"], said["message"]


@pytest.mark.parametrize("case", ["folder", "file"])
def test_a_permission_error_is_reported_in_process_too(case, tmp_path, monkeypatch):
    """The same in this process, the OS's answer simulated (as root, chmod would not stop reads)."""
    import pathlib

    folder = tmp_path / "data" / "mnist"
    folder.mkdir(parents=True)
    for name in (TEST_IMAGES, TEST_LABELS):
        (folder / name).write_bytes(b"x")
    monkeypatch.setenv("FLOWLIB_DATA", str(tmp_path / "data"))
    real_stat, real_open = os.stat, pathlib.Path.open

    def stat(path, *args, **kwargs):
        if case == "folder" and str(path).startswith(str(folder) + os.sep):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    def open_(self, *args, **kwargs):
        if case == "file" and self.name == TEST_IMAGES:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(pathlib.Path, "open", open_)
    with pytest.raises(im.DatasetError, match=r"(?i)permission denied.*readable.*FLOWLIB_DATA"):
        im.load_mnist("test", download=False)
