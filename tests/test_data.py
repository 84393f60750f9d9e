"""Every builder on tiny fixtures written here in the canonical raw formats, plus bad input."""

import gzip
import io
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import numpy as np
import pytest
import scipy.io
from PIL import Image

from aeclust_jax.data import (DATASETS, ChecksumError, DatasetError, MissingFilesError,
                              UnknownDatasetError, builder, load)
from aeclust_jax.data._base import RawFile

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ canonical-format writers
def write_idx_gz(path: pathlib.Path, array: np.ndarray) -> None:
    """IDX: magic 0 0 0x08 ndim, big-endian uint32 dims, then the uint8 data; gzipped."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def write_mnist_dir(folder: pathlib.Path, rng, n_train=30, n_test=12):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx_gz(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx_gz(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[prefix] = (images, labels)
    return arrays


def _tar_gz(path: pathlib.Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_cifar_archive(path: pathlib.Path, rng, per_batch=4):
    """cifar-10-python.tar.gz with 5 train batches + test_batch of ``per_batch`` images."""
    members, images = {}, {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        img = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        labels = list(rng.integers(0, 10, per_batch))
        data = img.transpose(0, 3, 1, 2).reshape(per_batch, 3072)  # R plane, G plane, B plane
        members[f"cifar-10-batches-py/{name}"] = pickle.dumps({b"data": data, b"labels": labels})
        images[name] = (img, labels)
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"label_names": []})
    path.parent.mkdir(parents=True, exist_ok=True)
    _tar_gz(path, members)
    return images


def write_stl_archive(path: pathlib.Path, rng, n_train=5, n_test=4, n_unlabeled=3):
    """stl10_binary.tar.gz: images stored channel by channel, each channel column-major."""
    members, out = {}, {}
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        img = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        members[f"stl10_binary/{split}_X.bin"] = img.transpose(0, 3, 2, 1).tobytes()
        labels = rng.integers(1, 11, n).astype(np.uint8)
        if split != "unlabeled":
            members[f"stl10_binary/{split}_y.bin"] = labels.tobytes()
        out[split] = (img, labels.astype(np.int64) - 1 if split != "unlabeled" else -np.ones(n))
    path.parent.mkdir(parents=True, exist_ok=True)
    _tar_gz(path, members)
    return out


def write_coil_mat(path: pathlib.Path, rng, per_class=2):
    """COIL20.mat layout: fea (N, 1024) float in [0, 1], each row an image stored column-major."""
    n = 20 * per_class
    images = rng.integers(0, 256, (n, 32, 32), dtype=np.uint8)
    images[:, :4, :] = 255  # a bright top band: orientation is visible
    fea = images.transpose(0, 2, 1).reshape(n, 1024) / 255.0
    gnd = np.repeat(np.arange(1, 21), per_class)[:, None].astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"fea": fea, "gnd": gnd})
    return images, gnd[:, 0] - 1


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_coil_proc_zip(path: pathlib.Path, rng, poses=2, odd_size_member=None):
    images = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for obj in range(1, 21):
            for pose in range(poses):
                side = 64 if f"obj{obj}__{pose}.png" == odd_size_member else 128
                img = rng.integers(0, 256, (side, side), dtype=np.uint8)
                images[(obj, pose)] = img
                z.writestr(f"coil-20-proc/obj{obj}__{pose}.png", png_bytes(img))
    return images


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ----------------------------------------------------------------------------- builders
def test_mnist_fixture_roundtrip(tmp_path, rng):
    arrays = write_mnist_dir(tmp_path / "raw", rng)
    for name in ("mnist", "fashion_mnist"):
        data_dir = tmp_path / "prep" / name
        train = load(name, "train", data_dir=data_dir, manual_dir=tmp_path / "raw",
                     verify_checksums=False)
        test = load(name, "test", data_dir=data_dir)  # prepared: no raw files needed
        assert train.images.shape == (30, 28, 28, 1) and train.images.dtype == np.uint8
        assert train.labels.dtype == np.int32 and train.num_classes == 10
        np.testing.assert_array_equal(train.images[..., 0], arrays["train"][0])  # order kept
        np.testing.assert_array_equal(train.labels, arrays["train"][1])
        np.testing.assert_array_equal(test.images[..., 0], arrays["t10k"][0])
        # A reload is served from the array cache and is identical.
        again = load(name, "train", data_dir=data_dir)
        np.testing.assert_array_equal(again.images, train.images)


def test_stale_array_cache_is_rebuilt(tmp_path, rng):
    write_mnist_dir(tmp_path / "raw", rng)
    first = load("mnist", data_dir=tmp_path, manual_dir=tmp_path / "raw", verify_checksums=False)
    cache = next(tmp_path.rglob("aeclust_arrays/train.npz"))
    cache.write_bytes(b"garbage")
    again = load("mnist", data_dir=tmp_path)
    np.testing.assert_array_equal(again.images, first.images)
    assert cache.stat().st_size > 1000  # rewritten


def test_manual_dir_from_environment(tmp_path, rng, monkeypatch):
    write_mnist_dir(tmp_path / "manual" / "mnist", rng)
    monkeypatch.setenv("AECLUST_MANUAL_DIR", str(tmp_path / "manual"))
    ds = load("mnist", data_dir=tmp_path / "prep", verify_checksums=False, download=False)
    assert len(ds) == 30


def test_manual_dir_may_be_a_root_of_dataset_folders(tmp_path, rng):
    write_mnist_dir(tmp_path / "root" / "mnist", rng)
    ds = load("mnist", data_dir=tmp_path, manual_dir=tmp_path / "root", verify_checksums=False,
              download=False)
    assert len(ds) == 30


def test_concurrent_prepares_all_succeed(tmp_path):
    code = textwrap.dedent(f"""
        from aeclust_jax.data import load
        ds = load("hanja_synth", data_dir={str(tmp_path)!r}, train_per_class=20, test_per_class=1,
                  size=32)
        print("ok", len(ds))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "ok 240" in out, err[-2000:]


def test_cifar10_fixture(tmp_path, rng):
    batches = write_cifar_archive(tmp_path / "raw" / "cifar-10-python.tar.gz", rng)
    train = load("cifar10", data_dir=tmp_path, manual_dir=tmp_path / "raw", verify_checksums=False)
    test = load("cifar10", "test", data_dir=tmp_path)
    assert train.images.shape == (20, 32, 32, 3) and test.images.shape == (4, 32, 32, 3)
    want = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(train.images, want)
    np.testing.assert_array_equal(test.labels, batches["test_batch"][1])
    assert train.class_names[0] == "airplane"


def test_stl10_fixture(tmp_path, rng):
    arrays = write_stl_archive(tmp_path / "raw" / "stl10_binary.tar.gz", rng)
    for split in ("train", "test", "unlabeled"):
        ds = load("stl10", split, data_dir=tmp_path, manual_dir=tmp_path / "raw",
                  verify_checksums=False)
        np.testing.assert_array_equal(ds.images, arrays[split][0])  # column-major decoded
        np.testing.assert_array_equal(ds.labels, arrays[split][1])
    assert ds.num_classes == 10 and (ds.labels == -1).all()


def test_coil20_mat_fixture_is_upright(tmp_path, rng):
    images, labels = write_coil_mat(tmp_path / "raw" / "COIL20.mat", rng)
    ds = load("coil20", data_dir=tmp_path, manual_dir=tmp_path / "raw", verify_checksums=False)
    assert ds.images.shape == (40, 32, 32, 1)
    np.testing.assert_array_equal(ds.images[..., 0], images)  # transposed back: upright
    assert (ds.images[:, :4] == 255).all()
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.class_names[-1] == "obj20"


@pytest.mark.parametrize("size", [32, 128])
def test_coil20_proc_zip_fixture(tmp_path, rng, size):
    images = write_coil_proc_zip(tmp_path / "raw" / "coil-20-proc.zip", rng)
    ds = load("coil20", data_dir=tmp_path, manual_dir=tmp_path / "raw", source="proc", size=size)
    assert ds.images.shape == (40, size, size, 1)
    np.testing.assert_array_equal(ds.labels, np.repeat(np.arange(20), 2))
    if size == 128:
        np.testing.assert_array_equal(ds.images[3, :, :, 0], images[(2, 1)])
    else:
        want = np.asarray(Image.fromarray(images[(2, 1)]).resize((32, 32), Image.LANCZOS))
        np.testing.assert_array_equal(ds.images[3, :, :, 0], want)


def _write_glyphs(folder: pathlib.Path, rng, labels, per_label, sub=False, shape=(40, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    for lab in labels:
        for i in range(per_label):
            img = rng.integers(0, 256, shape, dtype=np.uint8)
            if sub:
                (folder / lab).mkdir(exist_ok=True)
                Image.fromarray(img).save(folder / lab / f"{i:04d}.png")
            else:
                Image.fromarray(img).save(folder / f"{i:04d}_{lab}.png")


def test_hanja_folder_seeded_split(tmp_path, rng):
    _write_glyphs(tmp_path / "glyphs", rng, ["u4e00", "u4e8c", "u4e09"], 6)
    kw = dict(data_dir=tmp_path / "prep", folder=tmp_path / "glyphs", size=20, test_fraction=1 / 3)
    train, test = load("hanja", "train", **kw), load("hanja", "test", **kw)
    assert train.images.shape == (12, 20, 20, 1) and test.images.shape == (6, 20, 20, 1)
    assert train.class_names == ("u4e00", "u4e09", "u4e8c")  # sorted, as the authors' code
    other = load("hanja", "test", **{**kw, "seed": 1})
    assert not np.array_equal(other.images, test.images)  # the seed picks the split


def test_hanja_folder_train_test_subfolders(tmp_path, rng):
    _write_glyphs(tmp_path / "g" / "train", rng, ["a", "b"], 3, sub=True)
    _write_glyphs(tmp_path / "g" / "test", rng, ["a", "b"], 2, sub=True, shape=(100, 100))
    ds = load("hanja", "test", data_dir=tmp_path, folder=tmp_path / "g")
    assert ds.images.shape == (4, 100, 100, 1) and ds.labels.tolist() == [0, 0, 1, 1]
    img = np.asarray(Image.open(tmp_path / "g" / "test" / "b" / "0001.png"))
    np.testing.assert_array_equal(ds.images[3, :, :, 0], img)
    assert load("hanja", "train", data_dir=tmp_path, folder=tmp_path / "g").images.shape[0] == 6


def test_hanja_folder_change_is_reprepared(tmp_path, rng):
    _write_glyphs(tmp_path / "g", rng, ["a", "b"], 3)
    kw = dict(data_dir=tmp_path, folder=tmp_path / "g", test_fraction=1 / 3, size=16)
    assert len(load("hanja", **kw)) == 4
    _write_glyphs(tmp_path / "g", rng, ["c"], 3)
    assert load("hanja", **kw).num_classes == 3


def test_hanja_synth_small_and_deterministic(tmp_path):
    kw = dict(characters="之不而", train_per_class=4, test_per_class=2, size=48)
    a = load("hanja_synth", data_dir=tmp_path / "a", seed=3, **kw)
    b = load("hanja_synth", data_dir=tmp_path / "b", seed=3, **kw)
    c = load("hanja_synth", data_dir=tmp_path / "a", seed=4, **kw)
    assert a.images.shape == (12, 48, 48, 1) and a.class_names == ("u4e4b", "u4e0d", "u800c")
    assert np.bincount(a.labels).tolist() == [4, 4, 4]
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    # Dark ink on light paper: the median pixel is paper, the darkest ones are ink.
    assert np.median(a.images) > 150 and a.images.min() < 90
    test = load("hanja_synth", "test", data_dir=tmp_path / "a", seed=3, **kw)
    assert test.images.shape == (6, 48, 48, 1)


def test_hanja_synth_glyphs_are_distinguishable():
    """Class means of clean-ish samples differ more between classes than within."""
    from aeclust_jax.data import hanja_synth as hs
    sdfs = hs.render_templates("之不", hs.default_fonts()[:1])
    images, labels = hs.generate(sdfs, 2, 40, np.random.default_rng(0), size=64)
    x = images.reshape(len(images), -1).astype(np.float64)
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    m0, m1 = x[labels == 0].mean(0), x[labels == 1].mean(0)
    # nearest-class-mean accuracy, leave-in: must be far above chance (0.5)
    pred = (((x - m1) ** 2).sum(1) < ((x - m0) ** 2).sum(1)).astype(int)
    assert (pred == labels).mean() > 0.9


def test_tensorflow_never_imported(tmp_path, rng):
    write_mnist_dir(tmp_path / "raw", rng)
    code = textwrap.dedent(f"""
        import sys
        from aeclust_jax.data import load
        load("mnist", data_dir={str(tmp_path)!r}, manual_dir={str(tmp_path / 'raw')!r},
             verify_checksums=False)
        load("hanja_synth", data_dir={str(tmp_path)!r}, train_per_class=2, test_per_class=1)
        load("mnist", "test", data_dir={str(tmp_path)!r})
        assert "tensorflow" not in sys.modules, "tensorflow was imported"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


# ----------------------------------------------------------------------------- bad input
def test_unknown_name_split_option(tmp_path, rng):
    with pytest.raises(UnknownDatasetError, match="choices: mnist, fashion_mnist"):
        load("minst", data_dir=tmp_path)
    write_mnist_dir(tmp_path / "raw", rng)
    with pytest.raises(UnknownDatasetError, match="unknown split 'valid'; choices: train, test"):
        load("mnist", "valid", data_dir=tmp_path, manual_dir=tmp_path / "raw",
             verify_checksums=False)
    with pytest.raises(UnknownDatasetError, match="unknown option.*sizee.*choices: source, size"):
        load("coil20", data_dir=tmp_path, sizee=32)
    with pytest.raises(DatasetError, match="source='mat' size=32"):
        load("coil20", data_dir=tmp_path, source="mat", size=128)
    assert set(DATASETS) == {"mnist", "fashion_mnist", "cifar10", "stl10", "coil20", "hanja",
                             "image_folder", "hanja_synth"}


def test_missing_files_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("AECLUST_MANUAL_DIR", raising=False)
    with pytest.raises(MissingFilesError) as e:
        load("mnist", data_dir=tmp_path, manual_dir=tmp_path / "nowhere", download=False)
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert "AECLUST_MANUAL_DIR/mnist/" in msg and str(tmp_path / "nowhere") in msg
    assert not (tmp_path / "mnist").exists() or not any((tmp_path / "mnist").rglob("*.json"))


def test_failed_download_names_url_and_files(tmp_path, monkeypatch):
    from aeclust_jax.data import cifar10
    monkeypatch.delenv("AECLUST_MANUAL_DIR", raising=False)
    bad = RawFile("cifar-10-python.tar.gz", (tmp_path / "absent.tar.gz").as_uri(), md5=None)
    monkeypatch.setattr(cifar10.Cifar10, "RAW_FILES", (bad,))
    with pytest.raises(MissingFilesError, match=r"cifar-10-python.tar.gz.*download failed"):
        load("cifar10", data_dir=tmp_path)


def test_download_then_checksum(tmp_path, rng, monkeypatch):
    """Downloads go through the URL (file:// here), are verified, and a mismatch stops them."""
    from aeclust_jax.data import cifar10
    from aeclust_jax.data._base import md5sum
    monkeypatch.delenv("AECLUST_MANUAL_DIR", raising=False)
    src = tmp_path / "server" / "cifar-10-python.tar.gz"
    write_cifar_archive(src, rng)
    wrong = RawFile(src.name, src.as_uri(), md5="0" * 32)
    monkeypatch.setattr(cifar10.Cifar10, "RAW_FILES", (wrong,))
    with pytest.raises(ChecksumError, match=r"cifar-10-python.tar.gz: md5 .* expected 0000"):
        load("cifar10", data_dir=tmp_path / "d")
    assert not builder("cifar10", data_dir=tmp_path / "d").is_prepared()
    good = RawFile(src.name, src.as_uri(), md5=md5sum(src))
    monkeypatch.setattr(cifar10.Cifar10, "RAW_FILES", (good,))
    assert len(load("cifar10", data_dir=tmp_path / "d")) == 20
    assert (tmp_path / "d" / "downloads" / "cifar10" / src.name).is_file()


def test_checksum_mismatch_of_manual_files(tmp_path, rng):
    write_mnist_dir(tmp_path / "raw", rng)
    with pytest.raises(ChecksumError, match=r"train-images-idx3-ubyte.gz: md5 of the "
                                            r"uncompressed content .* expected 6bbc9ace"):
        load("mnist", data_dir=tmp_path, manual_dir=tmp_path / "raw")


def _assert_not_prepared(name, data_dir, **kw):
    assert not builder(name, data_dir=data_dir, **kw).is_prepared()
    assert not list(pathlib.Path(data_dir).rglob("dataset_info.json"))


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_truncated_gz_fails_cleanly(tmp_path, rng, cut):
    write_mnist_dir(tmp_path / "raw", rng)
    f = tmp_path / "raw" / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[: int(len(f.read_bytes()) * cut)])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz.*(truncated|corrupt)"):
        load("mnist", data_dir=tmp_path / "d", manual_dir=tmp_path / "raw", verify_checksums=False)
    _assert_not_prepared("mnist", tmp_path / "d")
    # Once the file is fixed, the same data dir prepares normally.
    write_mnist_dir(tmp_path / "raw", rng)
    assert len(load("mnist", data_dir=tmp_path / "d", manual_dir=tmp_path / "raw",
                    verify_checksums=False)) == 30


def test_idx_with_wrong_header(tmp_path, rng):
    write_mnist_dir(tmp_path / "raw", rng)
    write_idx_gz(tmp_path / "raw" / "t10k-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(DatasetError, match="holds 12 images but .*t10k-labels.* holds 5 labels"):
        load("mnist", data_dir=tmp_path, manual_dir=tmp_path / "raw", verify_checksums=False)
    with gzip.open(tmp_path / "raw" / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(DatasetError, match="bad magic number"):
        load("mnist", data_dir=tmp_path, manual_dir=tmp_path / "raw", verify_checksums=False)


def test_corrupt_tar_fails_cleanly(tmp_path, rng):
    path = tmp_path / "raw" / "cifar-10-python.tar.gz"
    write_cifar_archive(path, rng)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz.*(truncated|corrupt)"):
        load("cifar10", data_dir=tmp_path / "d", manual_dir=path.parent, verify_checksums=False)
    _assert_not_prepared("cifar10", tmp_path / "d")
    path.write_bytes(b"not a tar at all")
    with pytest.raises(DatasetError, match="not a readable CIFAR-10 tar.gz"):
        load("cifar10", data_dir=tmp_path / "d", manual_dir=path.parent, verify_checksums=False)
    spath = tmp_path / "raw" / "stl10_binary.tar.gz"
    write_stl_archive(spath, rng)
    spath.write_bytes(spath.read_bytes()[:-300])
    with pytest.raises(DatasetError, match="stl10_binary.tar.gz.*(truncated|corrupt)"):
        load("stl10", "unlabeled", data_dir=tmp_path / "d", manual_dir=spath.parent,
             verify_checksums=False)
    _assert_not_prepared("stl10", tmp_path / "d")


def test_corrupt_mat_and_mixed_sizes(tmp_path, rng):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "COIL20.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\x00" * 50)
    with pytest.raises(DatasetError, match="COIL20.mat: not a readable MATLAB file"):
        load("coil20", data_dir=tmp_path, manual_dir=tmp_path / "raw", verify_checksums=False)
    write_coil_proc_zip(tmp_path / "raw" / "coil-20-proc.zip", rng, odd_size_member="obj3__1.png")
    with pytest.raises(DatasetError, match=r"mixed sizes: coil-20-proc/obj3__1.png is \(64, 64\)"):
        load("coil20", data_dir=tmp_path, manual_dir=tmp_path / "raw", source="proc")
    _assert_not_prepared("coil20", tmp_path, source="proc")


def test_hanja_bad_folders(tmp_path, rng):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty holds no images"):
        load("hanja", data_dir=tmp_path, folder=tmp_path / "empty")
    with pytest.raises(MissingFilesError, match="does not exist"):
        load("hanja", data_dir=tmp_path, folder=tmp_path / "nope")
    with pytest.raises(MissingFilesError, match="pass folder="):
        load("hanja", data_dir=tmp_path)
    _write_glyphs(tmp_path / "g", rng, ["a", "b"], 3)
    (tmp_path / "g" / "0009_b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DatasetError, match="0009_b.png: not a readable image"):
        load("hanja", data_dir=tmp_path, folder=tmp_path / "g", test_fraction=0.25)
    _assert_not_prepared("hanja", tmp_path, folder=tmp_path / "g", test_fraction=0.25)
    (tmp_path / "g" / "0009_b.png").unlink()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "g" / "nolabel.png")
    with pytest.raises(DatasetError, match="nolabel.png: no class label"):
        load("hanja", data_dir=tmp_path, folder=tmp_path / "g")


def test_hanja_synth_bad_options(tmp_path):
    with pytest.raises(DatasetError, match="distinct"):
        load("hanja_synth", data_dir=tmp_path, characters="之之")
    with pytest.raises(DatasetError, match="cvttf-notosanscjk-regular"):
        load("hanja_synth", data_dir=tmp_path, fonts=[])
    with pytest.raises(DatasetError, match="does not exist"):
        load("hanja_synth", data_dir=tmp_path, fonts=[str(tmp_path / "x.ttf")])


def test_killed_prepare_leaves_nothing_that_loads(tmp_path, rng):
    """A process killed mid-prepare leaves only tfds' incomplete.* folder, never a dataset
    that looks prepared; the next load prepares from scratch."""
    write_mnist_dir(tmp_path / "raw", rng)
    code = textwrap.dedent(f"""
        import os
        from aeclust_jax.data import mnist, load
        original = mnist.IdxBuilder._generate_examples
        def dying(self, split, files):
            for i, ex in enumerate(original(self, split, files)):
                if split == "test" and i == 5:
                    os._exit(9)  # like SIGKILL: no cleanup at all
                yield ex
        mnist.IdxBuilder._generate_examples = dying
        load("mnist", data_dir={str(tmp_path / 'd')!r}, manual_dir={str(tmp_path / 'raw')!r},
             verify_checksums=False)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 9, out.stderr[-2000:]
    leftovers = [p.name for p in (tmp_path / "d" / "mnist").iterdir()]
    assert leftovers and all(n.startswith("incomplete.") for n in leftovers), leftovers
    _assert_not_prepared("mnist", tmp_path / "d")
    ds = load("mnist", "test", data_dir=tmp_path / "d", manual_dir=tmp_path / "raw",
              verify_checksums=False)
    assert len(ds) == 12


def test_build_data_script(tmp_path, rng):
    write_mnist_dir(tmp_path / "raw", rng)
    env = {**os.environ, "AECLUST_DATA_DIR": str(tmp_path / "d")}
    env.pop("AECLUST_MANUAL_DIR", None)
    script = str(ROOT / "scripts" / "build_data.py")
    ok = subprocess.run([sys.executable, script, "mnist", "--manual-dir", str(tmp_path / "raw"),
                         "--no-verify-checksums"], capture_output=True, text=True, env=env,
                        timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "mnist: train 30, test 12" in ok.stdout
    bad = subprocess.run([sys.executable, script, "mnist", "nosuch"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "error: unknown dataset 'nosuch'" in bad.stderr
    missing = subprocess.run([sys.executable, script, "fashion_mnist", "--offline"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert missing.returncode == 2 and "train-images-idx3-ubyte.gz" in missing.stderr


# ----------------------------------------------------------------------------- image_folder

def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _class_images(rng, classes, per_class, shape=(12, 10, 3)):
    """{'<class>/<i>.png': png bytes} and the arrays, RGB."""
    files, arrays = {}, {}
    for c in classes:
        for i in range(per_class):
            img = rng.integers(0, 256, shape, dtype=np.uint8)
            files[f"{c}/{i}.png"], arrays[f"{c}/{i}.png"] = _png(img), img
    return files, arrays


def test_image_folder_zip_with_split_folders_keeps_rgb_and_natural_order(tmp_path, rng, caplog):
    classes = ["10", "2", "1"]                    # natural order: 1, 2, 10
    train, arrays = _class_images(rng, classes, 3)
    test, _ = _class_images(rng, classes, 2)
    with zipfile.ZipFile(tmp_path / "imgs.zip", "w") as z:
        for name, data in train.items():
            z.writestr(f"top/train/{name}", data)
        for name, data in test.items():
            z.writestr(f"top/test/{name}", data)
        z.writestr("top/README.txt", "not an image")
    ds = load("image_folder", "train", data_dir=tmp_path / "d", path=tmp_path / "imgs.zip")
    assert ds.class_names == ("1", "2", "10") and ds.images.shape == (9, 12, 10, 3)
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    np.testing.assert_array_equal(ds.images[3], arrays["2/0.png"])      # lossless, upright, RGB
    assert len(load("image_folder", "test", data_dir=tmp_path / "d", path=tmp_path / "imgs.zip")) == 6
    assert not [r for r in caplog.records if "custom data configuration" in r.getMessage()]


def test_image_folder_tar_labels_from_file_names_gray_resized(tmp_path, rng):
    members = {f"glyphs/{i:03d}_{lab}.png": _png(rng.integers(0, 256, (30, 20), dtype=np.uint8))
               for i, lab in enumerate(["a", "b", "c"] * 5)}
    _tar_gz(tmp_path / "g.tar.gz", members)
    kw = dict(data_dir=tmp_path / "d", path=tmp_path / "g.tar.gz", channels=1, size=16,
              test_fraction=0.4)
    train, test = load("image_folder", "train", **kw), load("image_folder", "test", **kw)
    assert train.images.shape == (9, 16, 16, 1) and test.images.shape == (6, 16, 16, 1)
    assert np.bincount(test.labels).tolist() == [2, 2, 2]                   # stratified
    again = load("image_folder", "test", **{**kw, "seed": 1})
    assert not np.array_equal(again.images, test.images)                    # the seed picks it


def test_image_folder_folder_of_class_folders_and_bad_input(tmp_path, rng):
    files, _ = _class_images(rng, ["cat", "dog"], 4)
    for name, data in files.items():
        (tmp_path / "f" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "f" / name).write_bytes(data)
    kw = dict(data_dir=tmp_path / "d", test_fraction=0.25)
    ds = load("image_folder", "test", path=tmp_path / "f", **kw)
    assert ds.class_names == ("cat", "dog") and ds.images.shape == (2, 12, 10, 3)
    with pytest.raises(DatasetError, match="channels must be 1"):
        load("image_folder", path=tmp_path / "f", channels=2, **kw)
    with pytest.raises(MissingFilesError, match="pass path="):
        load("image_folder", **kw)
    (tmp_path / "x.rar").write_bytes(b"rar")
    with pytest.raises(DatasetError, match="neither a folder nor an archive"):
        load("image_folder", path=tmp_path / "x.rar", **kw)
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DatasetError, match="bad.zip: unreadable archive"):
        load("image_folder", path=tmp_path / "bad.zip", **kw)
    (tmp_path / "f" / "dog" / "9.png").write_bytes(_png(np.zeros((5, 5, 3), np.uint8)))
    with pytest.raises(DatasetError, match=r"mixed sizes: .*dog/9.png is \(5, 5\).*pass size="):
        load("image_folder", path=tmp_path / "f", **kw)
    # only the first, valid listing was prepared; the failed one left nothing that looks complete
    assert len(list((tmp_path / "d").glob("image_folder/*/1.0.0/dataset_info.json"))) == 1
    assert load("image_folder", path=tmp_path / "f", size=8, **kw).images.shape[1:] == (8, 8, 3)
