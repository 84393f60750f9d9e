"""Real-data checks on the canonical files in $AECLUST_MANUAL_DIR (CI points it at shared/data)."""

import numpy as np
import pytest

from aeclust_jax.data import load

pytestmark = pytest.mark.realdata

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_mnist_real(real_manual_dir, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("real")
    train = load("mnist", "train", data_dir=data_dir, manual_dir=real_manual_dir / "mnist")
    assert train.images.shape == (60000, 28, 28, 1) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int32
    assert np.bincount(train.labels).tolist() == MNIST_TRAIN_COUNTS
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # canonical order kept
    assert train.num_classes == 10 and train.class_names[3] == "3"
    test = load("mnist", "test", data_dir=data_dir)  # prepared: no manual dir needed any more
    assert test.images.shape == (10000, 28, 28, 1)
    assert train.images.max() == 255 and train.images.min() == 0


def test_fashion_mnist_real(real_manual_dir, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("real")
    for split, n in (("train", 60000), ("test", 10000)):
        ds = load("fashion_mnist", split, data_dir=data_dir,
                  manual_dir=real_manual_dir / "fashion_mnist")
        assert ds.images.shape == (n, 28, 28, 1)
        assert np.bincount(ds.labels).tolist() == [n // 10] * 10
    assert ds.class_names[9] == "ankle_boot"


def _mirror_corr(images: np.ndarray, axis: int) -> float:
    """Mean correlation of each image with its mirror image along ``axis`` (1: rows, 2: cols)."""
    a = images.reshape(len(images), -1).astype(np.float64)
    b = np.flip(images, axis=axis).reshape(len(images), -1).astype(np.float64)
    a -= a.mean(1, keepdims=True)
    b -= b.mean(1, keepdims=True)
    return float(((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))).mean())


def _top_wider_fraction(images: np.ndarray) -> float:
    """Fraction of images whose object is wider in its top quarter than in its bottom quarter."""
    out = []
    for img in images[..., 0] > 40:
        widths = img.sum(1)
        rows = np.nonzero(widths)[0]
        q = max(1, (rows[-1] - rows[0] + 1) // 4)
        out.append(widths[rows[0]:rows[0] + q].mean() > widths[rows[-1] - q + 1:rows[-1] + 1].mean())
    return float(np.mean(out))


def test_coil20_real_upright(real_manual_dir, tmp_path_factory):
    ds = load("coil20", data_dir=tmp_path_factory.mktemp("real"),
              manual_dir=real_manual_dir / "coil20")
    assert ds.images.shape == (1440, 32, 32, 1) and ds.images.dtype == np.uint8
    assert np.bincount(ds.labels).tolist() == [72] * 20
    # Upright, not transposed: most objects are left-right symmetric, not top-bottom.
    assert _mirror_corr(ds.images, 2) > _mirror_corr(ds.images, 1) + 0.1
    # Not upside down: the mushroom (obj11) and the cup (obj12) are wider at the top, the duck
    # (obj1) and the lucky cat (obj4) at the bottom, in (nearly) every pose.
    for obj, top_wider in ((11, True), (12, True), (1, False), (4, False)):
        frac = _top_wider_fraction(ds.images[ds.labels == obj - 1])
        assert (frac > 0.9) if top_wider else (frac < 0.1), (obj, frac)


CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck")


def test_image_folder_cifar10_jpeg_zip(real_manual_dir, tmp_path_factory):
    """The JPEG copy of CIFAR-10: cifar10/{train,test}/<class>/<n>.jpg inside the zip."""
    zip_path = real_manual_dir / "cifar10_jpeg" / "cifar10-jpeg.zip"
    assert zip_path.is_file(), f"missing {zip_path}"
    data_dir = tmp_path_factory.mktemp("real")
    train = load("image_folder", "train", data_dir=data_dir, path=zip_path)
    test = load("image_folder", "test", data_dir=data_dir, path=zip_path)
    assert train.images.shape == (50000, 32, 32, 3) and test.images.shape == (10000, 32, 32, 3)
    assert train.class_names == CIFAR_CLASSES and train.num_classes == 10
    assert np.bincount(train.labels).tolist() == [5000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    # colour images, not gray copies: the channels differ, and the sky of airplanes is blue
    rgb = train.images.reshape(-1, 3).astype(np.float64)
    assert np.abs(rgb[:, 0] - rgb[:, 2]).mean() > 5
    planes = train.images[train.labels == 0].astype(np.float64)
    assert planes[..., 2].mean() > planes[..., 0].mean()


def test_image_folder_chinese_mnist_zip(real_manual_dir, tmp_path_factory):
    """Chinese MNIST: 15000 handwritten numerals, label = last '_' token of the file name
    (1..15, natural order), a seeded stratified split."""
    zip_path = real_manual_dir / "chinese_mnist" / "chinese_mnist.zip"
    assert zip_path.is_file(), f"missing {zip_path}"
    data_dir = tmp_path_factory.mktemp("real")
    kw = dict(data_dir=data_dir, path=zip_path, channels=1, test_fraction=0.2, seed=0)
    train, test = load("image_folder", "train", **kw), load("image_folder", "test", **kw)
    assert train.images.shape == (12000, 64, 64, 1) and test.images.shape == (3000, 64, 64, 1)
    assert train.class_names == tuple(str(i) for i in range(1, 16))   # "2" before "10"
    assert np.bincount(train.labels).tolist() == [800] * 15
    assert np.bincount(test.labels).tolist() == [200] * 15
    small = load("image_folder", "test", **{**kw, "size": 28})         # resized: its own config
    assert small.images.shape == (3000, 28, 28, 1)
    np.testing.assert_array_equal(small.labels, test.labels)
