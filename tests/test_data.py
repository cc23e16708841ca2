"""Tests for knn_cli.data: finding, reading, downloading, preprocessing and caching CIFAR-10."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REAL_DATA_DIR, requires_real_data, write_fake_cifar

from knn_cli import data
from knn_cli.data import cifar10, load_cifar10
from knn_cli.data.batches import read_batch
from knn_cli.data.cifar10 import Dataset
from knn_cli.data.download import download_cifar10
from knn_cli.data.locate import cache_dir, find_data_dir
from knn_cli.errors import DataError

N_PER_BATCH = 30  # conftest default: 150 training images, 30 test images


def _entries() -> list[Path]:
    root = cache_dir() / "preprocessed"
    return sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []


def _raw_split(folder: Path, validation_size: int):
    batches = [read_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    pixels = np.concatenate([b[0] for b in batches]).astype(np.float64)
    labels = np.concatenate([b[1] for b in batches])
    split = len(pixels) - validation_size
    return pixels[:split], labels[:split], pixels[split:], labels[split:]


# --------------------------------------------------------------------------------------------
# Loading and preprocessing


def test_load_fake_folder_shapes_dtypes_and_splits(fake_cifar_dir: Path) -> None:
    ds = load_cifar10(str(fake_cifar_dir), validation_size=40)

    assert ds.X_train.shape == (110, 3072) and ds.y_train.shape == (110,)
    assert ds.X_val.shape == (40, 3072) and ds.y_val.shape == (40,)
    assert ds.X_test.shape == (N_PER_BATCH, 3072) and ds.y_test.shape == (N_PER_BATCH,)
    for X in (ds.X_train, ds.X_val, ds.X_test):
        assert X.dtype == np.float32 and X.flags.c_contiguous
    for y in (ds.y_train, ds.y_val, ds.y_test):
        assert y.dtype == np.int64 and y.min() >= 0 and y.max() <= 9
    assert ds.label_names[0] == "airplane" and len(ds.label_names) == ds.n_classes == 10
    assert ds.n_features == 3072
    assert ds.source == str(fake_cifar_dir.resolve())
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.source = "elsewhere"  # type: ignore[misc]


def test_train_split_is_standardized_per_feature(fake_cifar_dir: Path) -> None:
    ds = load_cifar10(str(fake_cifar_dir), validation_size=40)
    X = np.asarray(ds.X_train, dtype=np.float64)
    np.testing.assert_allclose(X.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(X.std(axis=0), 1.0, atol=1e-4)


def test_val_and_test_use_training_statistics(fake_cifar_dir: Path) -> None:
    ds = load_cifar10(str(fake_cifar_dir), validation_size=40)
    train, y_train, val, y_val = _raw_split(fake_cifar_dir, 40)
    test, y_test = read_batch(fake_cifar_dir / "test_batch")
    mean, std = train.mean(axis=0), train.std(axis=0)

    np.testing.assert_allclose(ds.X_val, (val - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.X_test, (test - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ds.y_train, y_train)
    np.testing.assert_array_equal(ds.y_val, y_val)  # the last images of data_batch_5
    np.testing.assert_array_equal(ds.y_test, y_test)
    # Own statistics would make the validation split exactly standardized; train's do not.
    assert np.abs(np.asarray(ds.X_val).mean(axis=0)).max() > 1e-3


def test_validation_size_zero_gives_empty_validation_split(fake_cifar_dir: Path) -> None:
    ds = load_cifar10(str(fake_cifar_dir), validation_size=0)
    assert ds.X_train.shape == (5 * N_PER_BATCH, 3072)
    assert ds.X_val.shape == (0, 3072) and ds.y_val.shape == (0,)


@pytest.mark.parametrize("bad", [-1, 5 * N_PER_BATCH, 10**6, 2.5, True])
def test_invalid_validation_size_is_refused(fake_cifar_dir: Path, bad: object) -> None:
    with pytest.raises(DataError, match="validation_size"):
        load_cifar10(str(fake_cifar_dir), validation_size=bad)  # type: ignore[arg-type]


def test_constant_feature_maps_to_zero_not_nan(tmp_path: Path) -> None:
    folder = write_fake_cifar(tmp_path / "const")
    for i in range(1, 6):
        path = folder / f"data_batch_{i}"
        with path.open("rb") as f:
            batch = pickle.load(f, encoding="bytes")
        batch[b"data"][:, 0] = 7
        with path.open("wb") as f:
            pickle.dump(batch, f, protocol=2)
    ds = load_cifar10(str(folder), validation_size=10)
    assert np.isfinite(ds.X_train).all() and np.isfinite(ds.X_test).all()
    assert (ds.X_train[:, 0] == 0).all()


# --------------------------------------------------------------------------------------------
# The preprocessed cache


def test_second_load_comes_from_cache(fake_cifar_dir: Path, monkeypatch) -> None:
    first = load_cifar10(str(fake_cifar_dir), validation_size=40)
    assert len(_entries()) == 1

    def no_reading(path):
        raise AssertionError(f"cache not used: read {path}")

    monkeypatch.setattr(data.batches, "read_batch", no_reading)
    second = load_cifar10(str(fake_cifar_dir), validation_size=40)

    for name in ("X_train", "X_val", "X_test"):
        array = getattr(second, name)
        assert isinstance(array, np.memmap) and not array.flags.writeable
        np.testing.assert_array_equal(array, getattr(first, name))
    for name in ("y_train", "y_val", "y_test"):
        np.testing.assert_array_equal(getattr(second, name), getattr(first, name))
    assert second.label_names == first.label_names
    assert len(_entries()) == 1


def test_cache_is_invalidated_when_a_source_file_changes(fake_cifar_dir: Path) -> None:
    before = load_cifar10(str(fake_cifar_dir), validation_size=40)
    old = np.array(before.X_train)
    replacement = write_fake_cifar(fake_cifar_dir.parent / "other", seed=1)
    (replacement / "data_batch_1").replace(fake_cifar_dir / "data_batch_1")
    future = time.time() + 10  # make sure the mtime differs even on coarse clocks
    os.utime(fake_cifar_dir / "data_batch_1", (future, future))

    after = load_cifar10(str(fake_cifar_dir), validation_size=40)

    assert not np.array_equal(np.asarray(after.X_train), old)
    assert len(_entries()) == 2


def test_validation_size_is_part_of_the_cache_key(fake_cifar_dir: Path) -> None:
    a = load_cifar10(str(fake_cifar_dir), validation_size=40)
    b = load_cifar10(str(fake_cifar_dir), validation_size=20)
    assert a.X_val.shape[0] == 40 and b.X_val.shape[0] == 20
    assert len(_entries()) == 2


@pytest.mark.parametrize("damage", ["truncate", "no_manifest", "bad_manifest", "missing_file"])
def test_damaged_cache_entry_is_rebuilt(fake_cifar_dir: Path, damage: str) -> None:
    good = np.array(load_cifar10(str(fake_cifar_dir), validation_size=40).X_train)
    (entry,) = _entries()
    if damage == "truncate":
        path = entry / "X_train.npy"
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "no_manifest":
        (entry / "manifest.json").unlink()
    elif damage == "bad_manifest":
        (entry / "manifest.json").write_text("{not json")
    else:
        (entry / "X_test.npy").unlink()

    again = load_cifar10(str(fake_cifar_dir), validation_size=40)

    np.testing.assert_array_equal(again.X_train, good)
    assert isinstance(again.X_train, np.memmap)
    assert load_cifar10(str(fake_cifar_dir), validation_size=40).X_test.shape[0] == N_PER_BATCH


def test_concurrent_loaders_share_one_entry(fake_cifar_dir: Path) -> None:
    script = (
        "import sys; from knn_cli.data import load_cifar10;"
        "ds = load_cifar10(sys.argv[1], validation_size=40);"
        "print(float(ds.X_train[:, :5].sum()))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(fake_cifar_dir)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    assert len(set(outputs)) == 1
    root = cache_dir() / "preprocessed"
    assert len(list(root.iterdir())) == 1  # one entry, no staging folders left behind


def test_loser_of_a_cache_race_uses_the_winners_entry(
    fake_cifar_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two loaders of one folder: the second finishes while the first still reads the batches.
    The first then finds the second's entry and uses it, as it is (not replaced by a copy of its
    own, which the second may have memory-mapped), leaving nothing of its own behind."""
    real_read_batch = data.batches.read_batch
    winner: dict[str, Any] = {}

    def read_while_another_loader_wins(path: Path) -> tuple[np.ndarray, np.ndarray]:
        if "started" not in winner:
            winner["started"] = True  # the winner's own reads go straight through
            winner["dataset"] = load_cifar10(str(fake_cifar_dir), validation_size=40)
            winner["file"] = os.stat(winner["dataset"].X_train.filename)
        return real_read_batch(path)

    monkeypatch.setattr(data.batches, "read_batch", read_while_another_loader_wins)
    loser = load_cifar10(str(fake_cifar_dir), validation_size=40)

    (entry,) = _entries()
    assert isinstance(loser.X_train, np.memmap)
    assert Path(loser.X_train.filename).parent == entry
    assert os.stat(entry / "X_train.npy").st_ino == winner["file"].st_ino  # the winner's file
    assert list(entry.parent.iterdir()) == [entry]  # the loser's staging folder is gone
    np.testing.assert_array_equal(loser.X_train, winner["dataset"].X_train)


def test_unwritable_cache_falls_back_to_memory(fake_cifar_dir: Path, tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("KNN_CACHE_DIR", str(blocker))
    with pytest.warns(UserWarning, match="cannot cache"):
        ds = load_cifar10(str(fake_cifar_dir), validation_size=40)
    assert not isinstance(ds.X_train, np.memmap)
    np.testing.assert_allclose(np.asarray(ds.X_train, np.float64).mean(axis=0), 0, atol=1e-5)


def test_cache_dir_resolution(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KNN_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("KNN_CACHE_DIR")
    assert cache_dir() == tmp_path / "xdg" / "knn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "knn"


# --------------------------------------------------------------------------------------------
# Where the data comes from


def test_lookup_order_explicit_then_env_then_cache(tmp_path: Path, monkeypatch) -> None:
    explicit = write_fake_cifar(tmp_path / "explicit")
    from_env = write_fake_cifar(tmp_path / "env")
    cached = write_fake_cifar(cache_dir() / "cifar-10-batches-py")
    monkeypatch.setenv("KNN_DATA_DIR", str(from_env))

    assert find_data_dir(str(explicit)) == explicit.resolve()
    assert find_data_dir(None) == from_env.resolve()
    monkeypatch.delenv("KNN_DATA_DIR")
    assert find_data_dir(None, download=False) == cached.resolve()


def test_invalid_explicit_folder_does_not_fall_back(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KNN_DATA_DIR", str(write_fake_cifar(tmp_path / "env")))
    with pytest.raises(DataError, match=r"data\.dir=.*does not exist"):
        find_data_dir(str(tmp_path / "typo"))


def test_invalid_env_folder_does_not_fall_back(tmp_path: Path, monkeypatch) -> None:
    write_fake_cifar(cache_dir() / "cifar-10-batches-py")
    monkeypatch.setenv("KNN_DATA_DIR", str(tmp_path / "typo"))
    with pytest.raises(DataError, match=r"KNN_DATA_DIR=.*does not exist"):
        find_data_dir(None)


def test_incomplete_cache_copy_is_not_used(tmp_path: Path) -> None:
    cached = write_fake_cifar(cache_dir() / "cifar-10-batches-py")
    (cached / "test_batch").unlink()
    with pytest.raises(DataError, match="download disabled"):
        find_data_dir(None, download=False)


def test_nothing_found_without_download_names_all_options() -> None:
    with pytest.raises(DataError) as info:
        find_data_dir(None, download=False)
    message = str(info.value)
    assert "KNN_DATA_DIR" in message and "data.dir" in message
    assert str(cache_dir() / "cifar-10-batches-py") in message


def test_parent_folder_error_suggests_the_nested_folder(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path / "downloads" / "cifar-10-batches-py")
    with pytest.raises(DataError, match=r"did you mean .*cifar-10-batches-py"):
        load_cifar10(str(tmp_path / "downloads"))


# --------------------------------------------------------------------------------------------
# Bad folders and bad files


def _corrupt(folder: Path, name: str, payload: object) -> None:
    path = folder / name
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        with path.open("wb") as f:
            pickle.dump(payload, f, protocol=2)


def _batch(data: object, labels: object) -> dict[bytes, object]:
    return {b"batch_label": b"x", b"data": data, b"labels": labels}


GOOD_PIXELS = np.zeros((4, 3072), np.uint8)

BAD_FILES = [
    ("data_batch_2", b"this is not a pickle", "not a CIFAR-10 pickle"),
    ("data_batch_2", b"", "not a CIFAR-10 pickle"),
    ("data_batch_3", [1, 2, 3], "holds list, not dict"),
    ("data_batch_3", {b"labels": [0]}, "no 'data' entry"),
    ("data_batch_3", {b"data": GOOD_PIXELS}, "no 'labels' entry"),
    ("data_batch_4", _batch(GOOD_PIXELS.astype(np.float32), [0] * 4), r"float32 \(4, 3072\)"),
    ("data_batch_4", _batch(np.zeros((4, 100), np.uint8), [0] * 4), r"expected uint8 \(n, 3072\)"),
    ("data_batch_4", _batch(np.zeros(3072, np.uint8), [0]), r"expected uint8"),
    ("data_batch_4", _batch([[0] * 3072], [0]), "expected a numpy array"),
    ("data_batch_5", _batch(GOOD_PIXELS, [0, 1, 2, 10]), r"range 0\.\.10, expected 0\.\.9"),
    ("data_batch_5", _batch(GOOD_PIXELS, [0, -1, 2, 3]), r"range -1\.\.3"),
    ("data_batch_5", _batch(GOOD_PIXELS, [0, 1, 2]), r"shape \(3,\), expected \(4,\)"),
    ("data_batch_5", _batch(GOOD_PIXELS, [0.0, 1.5, 2.0, 3.0]), "expected integers"),
    ("test_batch", _batch(GOOD_PIXELS, [[0, 1], [2, 3]]), "expected \\(4,\\)"),
    ("batches.meta", {b"label_names": [b"a"] * 9}, "list of 10 names"),
    ("batches.meta", {b"num_vis": 3072}, "list of 10 names"),
]


@pytest.mark.parametrize(("name", "payload", "problem"), BAD_FILES)
def test_bad_file_gives_data_error_naming_file_and_problem(
    fake_cifar_dir: Path, name: str, payload: object, problem: str
) -> None:
    _corrupt(fake_cifar_dir, name, payload)
    with pytest.raises(DataError, match=problem) as info:
        load_cifar10(str(fake_cifar_dir), validation_size=10)
    assert str(fake_cifar_dir / name) in str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_batch_is_refused(fake_cifar_dir: Path) -> None:
    path = fake_cifar_dir / "data_batch_1"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="data_batch_1: not a CIFAR-10 pickle"):
        load_cifar10(str(fake_cifar_dir), validation_size=10)


@pytest.mark.parametrize("missing", [["test_batch"], ["data_batch_3", "batches.meta"]])
def test_missing_files_are_named(fake_cifar_dir: Path, missing: list[str]) -> None:
    for name in missing:
        (fake_cifar_dir / name).unlink()
    with pytest.raises(DataError, match="missing " + ", ".join(missing)):
        load_cifar10(str(fake_cifar_dir))


def test_missing_folder_and_file_instead_of_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10(str(tmp_path / "nope"))
    (tmp_path / "archive.tar.gz").write_bytes(b"x")
    with pytest.raises(DataError, match="not a folder"):
        load_cifar10(str(tmp_path / "archive.tar.gz"))


def test_batches_with_str_keys_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    labels = [3, 1, 4, 1]
    with path.open("wb") as f:
        pickle.dump({"data": GOOD_PIXELS + 5, "labels": labels}, f, protocol=2)
    pixels, y = read_batch(path)
    assert pixels.dtype == np.uint8 and (pixels == 5).all()
    np.testing.assert_array_equal(y, labels)
    assert y.dtype == np.int64


def _py2_style_batch(pixels: np.ndarray, labels: list[int]) -> bytes:
    """Protocol-2 pickle as Python 2 wrote CIFAR-10: str keys, raw str data, numpy.core names."""

    def binstring(value: bytes) -> bytes:
        if len(value) < 256:
            return b"U" + bytes([len(value)]) + value
        return b"T" + struct.pack("<i", len(value)) + value

    def int_(value: int) -> bytes:
        return b"K" + bytes([value]) if value < 256 else b"M" + struct.pack("<H", value)

    n = pixels.shape[0]
    dtype = (
        b"cnumpy\ndtype\n" + binstring(b"u1") + int_(0) + int_(1) + b"\x87R"
        b"(" + int_(3) + binstring(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff" + int_(0)
    ) + b"tb"
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n"
        b"" + int_(0) + b"\x85" + binstring(b"b") + b"\x87R"
        b"(" + int_(1) + int_(n) + int_(3072) + b"\x86" + dtype + b"\x89"
    ) + (binstring(pixels.tobytes()) + b"tb")
    label_list = b"](" + b"".join(int_(c) for c in labels) + b"e"
    return (
        b"\x80\x02}("
        + binstring(b"batch_label")
        + binstring(b"training batch 1 of 5")
        + binstring(b"labels")
        + label_list
        + binstring(b"data")
        + array
        + b"u."
    )


def test_python2_style_pickles_like_the_original_files_load(tmp_path: Path) -> None:
    pixels = np.arange(3 * 3072, dtype=np.int64).reshape(3, 3072).astype(np.uint8)
    raw = _py2_style_batch(pixels, [7, 0, 9])
    assert pickle.loads(raw, encoding="bytes")[b"data"].shape == (3, 3072)  # the helper is right
    path = tmp_path / "data_batch_1"
    path.write_bytes(raw)

    got, labels = read_batch(path)

    np.testing.assert_array_equal(got, pixels)
    np.testing.assert_array_equal(labels, [7, 0, 9])


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["data_batch_1", "batches.meta"])
def test_malicious_pickle_is_refused_and_not_executed(
    fake_cifar_dir: Path, tmp_path: Path, where: str
) -> None:
    marker = tmp_path / "pwned"
    payload = {b"data": _Evil(marker), b"labels": [0], b"label_names": _Evil(marker)}
    with (fake_cifar_dir / where).open("wb") as f:
        pickle.dump(payload, f, protocol=2)

    with pytest.raises(DataError, match=r"refusing to load (posix|nt|os)\.system") as info:
        load_cifar10(str(fake_cifar_dir), validation_size=10)

    assert where in str(info.value)
    assert not marker.exists()


def test_other_globals_and_codecs_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": eval}, protocol=2))  # builtins.eval
    with pytest.raises(DataError, match=r"refusing to load (__builtin__|builtins)\.eval"):
        read_batch(path)
    # _codecs.encode is allowed only for the latin-1 round trip that pickle itself emits.
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(DataError, match=r"refusing _codecs\.encode"):
        read_batch(path)


# --------------------------------------------------------------------------------------------
# Download and extraction


def _tar_gz(path: Path, add) -> tuple[str, str]:
    """Build a .tar.gz with `add(tar)` and return its file:// URL and MD5."""
    with tarfile.open(path, "w:gz") as tar:
        add(tar)
    return path.as_uri(), hashlib.md5(path.read_bytes()).hexdigest()


def _good_archive(tmp_path: Path) -> tuple[str, str]:
    source = write_fake_cifar(tmp_path / "src" / "cifar-10-batches-py")
    return _tar_gz(tmp_path / "good.tar.gz", lambda tar: tar.add(source, "cifar-10-batches-py"))


def test_download_verifies_and_unpacks_a_usable_folder(tmp_path: Path) -> None:
    url, md5 = _good_archive(tmp_path)
    dest = tmp_path / "dest"

    folder = download_cifar10(dest, url=url, md5=md5, progress=False)

    assert folder == dest / "cifar-10-batches-py"
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-batches-py"]  # no leftovers
    ds = load_cifar10(str(folder), validation_size=10)
    assert ds.X_train.shape == (5 * N_PER_BATCH - 10, 3072)


def test_download_with_wrong_md5_unpacks_nothing(tmp_path: Path) -> None:
    url, _ = _good_archive(tmp_path)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="MD5"):
        download_cifar10(dest, url=url, md5="0" * 32, progress=False)
    assert list(dest.iterdir()) == []


def test_progress_bar_only_when_asked(tmp_path: Path, capsys) -> None:
    url, md5 = _good_archive(tmp_path)
    download_cifar10(tmp_path / "quiet", url=url, md5=md5, progress=False)
    assert capsys.readouterr().err == ""
    download_cifar10(tmp_path / "loud", url=url, md5=md5, progress=True)
    assert "CIFAR-10" in capsys.readouterr().err


def test_missing_data_is_downloaded_into_the_cache(tmp_path: Path, monkeypatch) -> None:
    url, md5 = _good_archive(tmp_path)
    monkeypatch.setattr(cifar10, "CIFAR10_URL", url)
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", md5)

    ds = load_cifar10(validation_size=10, progress=False)

    assert ds.source == str((cache_dir() / "cifar-10-batches-py").resolve())
    assert find_data_dir(None, download=False) == Path(ds.source)


def test_download_when_another_process_finished_first(tmp_path: Path) -> None:
    url, md5 = _good_archive(tmp_path)
    dest = tmp_path / "dest"
    already = write_fake_cifar(dest / "cifar-10-batches-py", seed=5)
    assert download_cifar10(dest, url=url, md5=md5, progress=False) == already
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-batches-py"]


def test_download_over_an_incomplete_folder_says_what_to_remove(tmp_path: Path) -> None:
    url, md5 = _good_archive(tmp_path)
    dest = tmp_path / "dest"
    (dest / "cifar-10-batches-py").mkdir(parents=True)
    (dest / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"half")
    with pytest.raises(DataError, match="remove that folder and retry"):
        download_cifar10(dest, url=url, md5=md5, progress=False)
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-batches-py"]


def _add_bytes(tar: tarfile.TarFile, name: str, payload: bytes = b"evil") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _add_link(tar: tarfile.TarFile, name: str, target: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


UNSAFE_ARCHIVES = {
    "parent": (lambda tar: _add_bytes(tar, "../evil"), "unsafe member path '../evil'"),
    "nested_parent": (
        lambda tar: _add_bytes(tar, "cifar-10-batches-py/../../evil"),
        "unsafe member path",
    ),
    "absolute": (lambda tar: _add_bytes(tar, "/tmp/knn-test-evil"), "unsafe member path"),
    "symlink": (
        lambda tar: _add_link(tar, "cifar-10-batches-py/data_batch_1", "/etc", tarfile.SYMTYPE),
        "links and devices not allowed",
    ),
    "hardlink": (
        lambda tar: _add_link(tar, "cifar-10-batches-py/x", "/etc/passwd", tarfile.LNKTYPE),
        "links and devices not allowed",
    ),
    "device": (
        lambda tar: _add_link(tar, "cifar-10-batches-py/null", "", tarfile.CHRTYPE),
        "links and devices not allowed",
    ),
}


@pytest.mark.parametrize("kind", sorted(UNSAFE_ARCHIVES))
def test_unsafe_archive_members_are_refused(tmp_path: Path, kind: str) -> None:
    add_evil, problem = UNSAFE_ARCHIVES[kind]
    source = write_fake_cifar(tmp_path / "src" / "cifar-10-batches-py", n_per_batch=10)

    def add(tar: tarfile.TarFile) -> None:
        tar.add(source, "cifar-10-batches-py")  # good files first: nothing may be written anyway
        add_evil(tar)

    url, md5 = _tar_gz(tmp_path / "evil.tar.gz", add)
    dest = tmp_path / "deep" / "dest"

    with pytest.raises(DataError, match=problem):
        download_cifar10(dest, url=url, md5=md5, progress=False)

    assert list(dest.iterdir()) == []
    assert not (tmp_path / "deep" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not Path("/tmp/knn-test-evil").exists()


def test_archive_that_is_not_a_tar_or_lacks_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar at all")
    md5 = hashlib.md5(junk.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="cannot unpack"):
        download_cifar10(tmp_path / "a", url=junk.as_uri(), md5=md5, progress=False)

    url, md5 = _tar_gz(tmp_path / "partial.tar.gz", lambda t: _add_bytes(t, "README.txt"))
    with pytest.raises(DataError, match="lacks cifar-10-batches-py/data_batch_1"):
        download_cifar10(tmp_path / "b", url=url, md5=md5, progress=False)
    assert list((tmp_path / "b").iterdir()) == []


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"


@pytest.mark.parametrize("make_url", [_closed_port_url, lambda: "file:///nonexistent/c.tar.gz"])
def test_offline_gives_one_line_error_with_what_was_tried(monkeypatch, make_url) -> None:
    url = make_url()
    monkeypatch.setattr(cifar10, "CIFAR10_URL", url)

    with pytest.raises(DataError) as info:
        load_cifar10(progress=False)

    message = str(info.value)
    assert "\n" not in message
    for expected in ("data.dir", "KNN_DATA_DIR", str(cache_dir() / "cifar-10-batches-py"), url):
        assert expected in message
    assert "--set data.dir=PATH" in message and "export KNN_DATA_DIR=PATH" in message
    assert not [p for p in cache_dir().iterdir() if p.name.endswith(".tar.gz")]


# --------------------------------------------------------------------------------------------
# The real data set


@pytest.fixture
def _drop_cache_afterwards():
    """The real preprocessed cache is ~740 MB; don't leave it in pytest's kept temp folders."""
    yield
    shutil.rmtree(cache_dir(), ignore_errors=True)


@requires_real_data
@pytest.mark.usefixtures("_drop_cache_afterwards")
def test_real_cifar10() -> None:
    assert REAL_DATA_DIR is not None
    ds = load_cifar10(str(REAL_DATA_DIR))

    assert isinstance(ds, Dataset)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (45000, 5000, 10000)
    assert ds.X_train.shape == (45000, 3072) and ds.X_train.dtype == np.float32
    for y in (ds.y_train, ds.y_val, ds.y_test):
        assert set(np.unique(y)) == set(range(10))
    assert ds.label_names == (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    )
    np.testing.assert_allclose(ds.X_train[:, :8].mean(axis=0), 0, atol=1e-4)

    first, _ = read_batch(REAL_DATA_DIR / "data_batch_1")
    assert first[0, :4].tolist() == [59, 43, 50, 68]  # the frog's red channel (README)
    channel_sums = np.zeros(3)
    for i in range(1, 6):
        pixels, _ = read_batch(REAL_DATA_DIR / f"data_batch_{i}")
        channel_sums += pixels.reshape(-1, 3, 1024).sum(axis=(0, 2), dtype=np.float64)
    channel_means = channel_sums / (50000 * 1024 * 255)
    np.testing.assert_allclose(channel_means, [0.4914, 0.4822, 0.4465], atol=1e-3)
