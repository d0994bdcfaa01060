"""The torchvision dataset paths, on small files written in each dataset's own on-disk format.
Nothing is downloaded: where a test needs the network to be absent, it points the proxy at a closed port.
Each test needs its dataset's config (a project may keep some of them: tests/conftest.py)."""

from __future__ import annotations

import gzip

import pytest
import torch

from data.splits import DatasetError
from tests.helpers import needs

MNIST_KW = dict(val_fraction=0.25, split_seed=0, mean=[0.5], std=[0.5])


def write_mnist_like(root, name: str, n_train=40, n_test=12) -> None:
    """The raw IDX files of MNIST or FashionMNIST (data/vision.py's example writers)."""
    from data import vision

    writer = {"MNIST": vision.write_mnist_example, "FashionMNIST": vision.write_fashion_mnist_example}[name]
    writer(root, n_train, n_test)


def write_cifar10(root, n_per_batch=8) -> None:
    """CIFAR-10's pickled python batches (data/vision.py's example writer)."""
    from data.vision import write_cifar10_example

    write_cifar10_example(root, n_per_batch)


def write_imagefolder(root, classes: int, per_class: int, size: int = 20):
    """PNGs in class folders (data/imagefolder.py's example writer)."""
    from data.imagefolder import write_example

    write_example(root, classes, per_class, size)
    return root


def vision(name: str):
    """A dataset function of data/vision.py (imported here: a project without these datasets has no module)."""
    from data import vision

    return getattr(vision, name)


@pytest.mark.parametrize(
    ("name", "folder"),
    [
        pytest.param("mnist", "MNIST", marks=needs("conf/data/mnist.yaml")),
        pytest.param("fashion_mnist", "FashionMNIST", marks=needs("conf/data/fashion_mnist.yaml")),
    ],
)
def test_mnist_like_loads_from_idx_files(name, folder, tmp_path):
    write_mnist_like(tmp_path, folder)
    splits = vision(name)(root=str(tmp_path), download=False, **MNIST_KW)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 12)
    x, y = splits.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0  # normalized with mean=std=0.5
    # train and val come from the official train split and never overlap
    assert not set(splits.train.indices) & set(splits.val.indices)


@needs("conf/data/cifar10.yaml")
def test_cifar10_loads_from_python_batches(tmp_path):
    write_cifar10(tmp_path)
    splits = vision("cifar10")(root=str(tmp_path), download=False, val_fraction=0.25, split_seed=0,
                     mean=[0.5] * 3, std=[0.5] * 3)  # fmt: skip
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 8)
    x, _ = splits.val[0]
    assert x.shape == (3, 32, 32)


@needs("conf/data/mnist.yaml")
def test_absent_dataset_without_download_names_it_and_the_path(tmp_path):
    with pytest.raises(DatasetError, match=r"MNIST is not in .*nothing_here.* download is off"):
        vision("mnist")(root=str(tmp_path / "nothing_here"), download=False, **MNIST_KW)


@needs("conf/data/fashion_mnist.yaml")
def test_absent_dataset_offline_names_it_and_the_path(tmp_path, monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens there: offline, at once
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(DatasetError, match=r"FashionMNIST is not in .*absent.* could not be downloaded"):
        vision("fashion_mnist")(root=str(tmp_path / "absent"), download=True, **MNIST_KW)


@needs("conf/data/imagefolder.yaml")
def test_imagefolder_splits_and_checks(tmp_path):
    from data.imagefolder import imagefolder

    root = write_imagefolder(tmp_path / "imgs", classes=2, per_class=10)
    kw = dict(image_size=16, in_channels=3, val_fraction=0.2, test_fraction=0.2, split_seed=1,
              mean=[0.5] * 3, std=[0.5] * 3)  # fmt: skip
    splits = imagefolder(root=str(root), num_classes=2, **kw)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 4)
    assert splits.test[0][0].shape == (3, 16, 16)
    with pytest.raises(DatasetError, match="does not exist"):
        imagefolder(root=str(tmp_path / "missing"), num_classes=2, **kw)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        imagefolder(root=str(tmp_path / "empty"), num_classes=2, **kw)
    with pytest.raises(DatasetError, match="2 class folders but data.num_classes=5"):
        imagefolder(root=str(root), num_classes=5, **kw)


@needs("conf/data/digits.yaml")
def test_digits_split_is_deterministic_by_seed():
    from data.digits import digits

    a = digits(0.15, 0.15, split_seed=3, mean=[0.3], std=[0.38])
    b = digits(0.15, 0.15, split_seed=3, mean=[0.3], std=[0.38])
    c = digits(0.15, 0.15, split_seed=4, mean=[0.3], std=[0.38])
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    assert not torch.equal(a.test.tensors[0], c.test.tensors[0])
    assert len(a.train) + len(a.val) + len(a.test) == 1797


@needs("conf/data/mnist.yaml")
def test_gzip_is_not_needed_for_mnist(tmp_path):
    # torchvision reads the extracted raw files; a stray .gz beside them must not matter.
    write_mnist_like(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"junk"))
    assert len(vision("mnist")(root=str(tmp_path), download=False, **MNIST_KW).test) == 12
