"""The datasets mnistgen knows: file names, checksums (``gz_md5`` of the served file, ``content_md5`` of the IDX
content; either accepts it) and mirrors (base URLs tried in order; ``--mirrors`` or ``$MNISTGEN_MIRRORS`` replace them).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DataError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10


@dataclass(frozen=True)
class FileSpec:
    role: str  # "train_images" | "train_labels" | "test_images" | "test_labels"
    name: str  # file name as served, e.g. "train-images-idx3-ubyte.gz"
    gz_md5: str | None
    content_md5: str | None
    count: int  # number of items (images or labels)

    @property
    def is_images(self) -> bool:
        return self.role.endswith("images")

    @property
    def magic(self) -> int:
        return IMAGES_MAGIC if self.is_images else LABELS_MAGIC

    @property
    def item_shape(self) -> tuple[int, ...]:
        return IMAGE_SHAPE if self.is_images else ()

    @property
    def local_names(self) -> tuple[str, ...]:
        """Names a local copy may have, in the order they are looked for: as served (.gz), then inflated."""
        return (self.name, self.name.removesuffix(".gz")) if self.name.endswith(".gz") else (self.name,)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    files: tuple[FileSpec, ...]
    mirrors: tuple[str, ...]  # base URLs, tried in order; each ends with "/"
    classes: tuple[str, ...]

    def file(self, role: str) -> FileSpec:
        return next(f for f in self.files if f.role == role)


def _files(*md5s: tuple[str | None, str | None], prefix: str = "", sizes: tuple[int, int] = (60000, 10000)
           ) -> tuple[FileSpec, ...]:
    """The four files from their (gz MD5, content MD5): train images, train labels, test images, test labels."""
    layout = (("train_images", "train-images-idx3-ubyte.gz", sizes[0]),
              ("train_labels", "train-labels-idx1-ubyte.gz", sizes[0]),
              ("test_images", "t10k-images-idx3-ubyte.gz", sizes[1]),
              ("test_labels", "t10k-labels-idx1-ubyte.gz", sizes[1]))
    return tuple(FileSpec(role, prefix + name, *md5, count)
                 for (role, name, count), md5 in zip(layout, md5s, strict=True))


DIGITS = tuple(str(d) for d in range(10))
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", "MNIST", _files(
        ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
        ("d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
        ("9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
        ("ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637")),
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/",
         "http://yann.lecun.com/exdb/mnist/"), DIGITS),
    "fashion-mnist": DatasetSpec("fashion-mnist", "Fashion-MNIST", _files(
        ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", None), ("25c81989df183df01b3e8a0aad5dffbe", None),
        ("bef4ecab320f06d8554ea6380940ec79", None), ("bb300cfdad3c16e7a12a480ee83cd310", None)),
        ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
         "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")),
    "kmnist": DatasetSpec("kmnist", "Kuzushiji-MNIST", _files(
        ("bdb82020997e1d708af4cf47b453dcf7", None), ("e144d726b3acfaa3e44228e80efcd344", None),
        ("5c965bf0a639b31b8f53240b1b52f4d7", None), ("7320c461ea6c1c855c0b718fb2a4b134", None)),
        ("https://codh.rois.ac.jp/kmnist/dataset/kmnist/", "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"),
        ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
}

# mnistgen's own 5,000-digit sample of real MNIST, shipped in ``mnistgen/assets/mnist-sample/`` (made by
# ``scripts/make_sample.py``; see :mod:`mnistgen.data.sample`). Not in DATASETS: nothing is downloaded for it.
SAMPLE_SPEC = DatasetSpec("mnist-sample", "MNIST 5,000-digit sample", _files(
    ("b9224c56685bcec990529d1f20ed7521", "7c436313f92f84ffdaff6bc0b4239c9d"),
    ("78afc0a169f2e2d6a1de3ff92e78e779", "658bc865842ab76288e829a67dcb1c06"),
    ("075a46a29ff48b6ab258bedec118ff2c", "98823ef7529b063f13cea0f63bfa6364"),
    ("2523da948fd0a767ea39c01ecfcead44", "25a4ce62dcd2602d01c1eebf4701d637"), prefix="sample-", sizes=(4000, 1000)),
    (), DIGITS)


def get_dataset(name: str) -> DatasetSpec:
    """The registry entry of ``name``; an unknown name is a one-line DataError listing the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)}, mnist-sample)") from None
