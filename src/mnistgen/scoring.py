"""Sample quality by mnistgen's own MNIST classifier (``mnistgen/assets``): the Frechet distance of its 128-d
features to the test images, the classifier score and the class histogram, each beside the real-vs-real reference."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import tokenize
import zipfile
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import DataConfig, ScoreConfig
from .data.cache import VerdictStore, cache_root
from .data.registry import get_dataset
from .data.sources import FilesUnavailable, RawData, load_raw, obtain_files, offline_requested
from .errors import MnistgenError
from .files import atomic_write, read_json, write_json
from .imaging import to_uint8
from .models.classifier import FEATURE_DIM, IMAGE_SIZE, NUM_CLASSES, MnistClassifier
from .stats import is_number
from .version import __version__

WEIGHTS_NAME = "classifier.pt"
REFERENCE_TRAIN_IMAGES = 10_000  # the last 10k training images: the classifier's held-out validation part
REFERENCE_VERSION = "1"  # bump when the definition of the cached reference changes
MIN_IMAGES = 2  # a covariance needs at least two samples
DEFAULT_BATCH_SIZE = ScoreConfig().batch_size
REFERENCE_KEY = "real_vs_real_reference"  # the key of the reference's numbers in a score file


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and unbiased covariance (D, D), both float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < MIN_IMAGES:
        raise MnistgenError(f"need at least {MIN_IMAGES} feature rows for a covariance, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """Tr (S1 S2)^(1/2) for PSD S1, S2: the eigenvalues of S1 S2 are those of S1^(1/2) S2 S1^(1/2) >= 0, so numpy's
    ``eigh`` suffices (no scipy at runtime); round-off negative eigenvalues are clipped to 0."""
    cov1 = np.asarray(cov1, dtype=np.float64)
    eigenvalues, eigenvectors = np.linalg.eigh((cov1 + cov1.T) / 2.0)
    root1 = (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T  # S1^(1/2)
    middle = root1 @ np.asarray(cov2, dtype=np.float64) @ root1  # (D, D), symmetric PSD
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray) -> float:
    """Squared 2-Wasserstein distance between N(mean1, cov1) and N(mean2, cov2), in float64."""
    difference = np.asarray(mean1, np.float64) - np.asarray(mean2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    value = difference @ difference + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt_product(cov1, cov2)
    return max(float(value), 0.0)  # a distance; tiny negative values are round-off


def classifier_score(probabilities: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))) for (N, C) rows p(y|x) summing to 1; p(y) is their mean. In [1, C]."""
    p = np.asarray(probabilities, dtype=np.float64)
    marginal = p.mean(axis=0, keepdims=True)  # (1, C) p(y)
    # KL row by row; 0 log 0 = 0, and p(y) > 0 wherever some p(y|x) > 0
    safe_p = np.where(p > 0, p, 1.0)
    safe_marginal = np.where(marginal > 0, marginal, 1.0)
    kl = np.sum(np.where(p > 0, p * (np.log(safe_p) - np.log(safe_marginal)), 0.0), axis=1)  # (N,)
    return float(np.exp(kl.mean()))


def class_histogram(probabilities: np.ndarray) -> list[int]:
    """Number of images whose most probable class is 0, 1, ..., C-1."""
    predictions = np.asarray(probabilities).argmax(axis=1)
    return np.bincount(predictions, minlength=np.shape(probabilities)[1]).astype(int).tolist()


def class_balance(histogram: tuple[int, ...] | list[int]) -> dict[str, float]:
    """How far the class shares p_k of a histogram are from uniform: the total variation distance to it,
    1/2 sum_k |p_k - 1/10| (0 balanced, 0.9 one class), and the smallest share (0.1 balanced); NaN of no images."""
    counts = np.asarray(histogram, np.float64)
    shares = counts / counts.sum() if counts.sum() > 0 else np.full(NUM_CLASSES, np.nan)
    return {"class_tv_distance": float(np.abs(shares - 1 / NUM_CLASSES).sum() / 2), "min_class_share": min(shares)}


BALANCE_LABELS = {"class_tv_distance": "class TV to uniform (lower)", "min_class_share": "min class share (max 0.1)"}


def worst_seeds(per_seed: dict[int, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The least balanced seed by each number of :func:`class_balance`: {key: {"seed": S, "value": v}}."""
    worst = {key: pick(per_seed, key=lambda seed, key=key: per_seed[seed][key])
             for key, pick in (("class_tv_distance", max), ("min_class_share", min))}
    return {key: {"seed": seed, "value": per_seed[seed][key]} for key, seed in worst.items()}


def check_layout(dtype: np.dtype, shape: tuple[int, ...], what: str) -> None:
    """(N >= 2, 28, 28) of float32, float64 or uint8 (what :func:`check_images` takes); else a one-line error."""
    if dtype not in (np.float32, np.float64, np.uint8):
        raise MnistgenError(f"{what}: dtype {dtype}, expected float32 or float64 in [0, 1], or uint8 0-255")
    if len(shape) != 3 or shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise MnistgenError(f"{what}: shape {shape}, expected (N, {IMAGE_SIZE}, {IMAGE_SIZE})")
    if shape[0] < MIN_IMAGES:
        raise MnistgenError(f"{what}: {shape[0]} image(s), need at least {MIN_IMAGES} for a covariance")


def check_images(array: Any, what: str = "images") -> np.ndarray:
    """An (N >= 2, 28, 28) array of float32/float64 in [0, 1], or of uint8 levels 0-255 (as MNIST stores pixels),
    as floats in [0, 1] (level / 255, SPEC §1); anything else is a one-line error."""
    if not isinstance(array, np.ndarray):
        raise MnistgenError(f"{what}: expected a numpy array, got {type(array).__name__}")
    check_layout(array.dtype, array.shape, what)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    check_finite_values(array, what)
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        levels = "; pixel levels 0-255? divide them by 255" if low >= 0.0 and 1.5 < high <= 255.0 else ""
        raise MnistgenError(f"{what}: values outside [0, 1] (min {low:.4g}, max {high:.4g}){levels}")
    return array


MAX_ARRAY_BYTES = 512 << 20  # the largest array read, as declared and as the float32/64 scored: all 70,000 MNIST
# images in float64 are 439 MB, 10,000 samples 63 MB; 2.9 MB of .npz may declare 3 GB of zeros
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def check_finite_values(array: np.ndarray, what: str) -> None:
    nan_count = int(np.isnan(array).sum())
    if nan_count:
        raise MnistgenError(f"{what}: {nan_count} NaN value(s)")
    infinite_count = int(np.isinf(array).sum())
    if infinite_count:
        raise MnistgenError(f"{what}: {infinite_count} infinite value(s)")


def read_array(handle: Any, where: str, size: int) -> np.ndarray:
    """The images of an open .npy stream of ``size`` bytes (a file, or an .npz member), never unpickled; its header
    is checked (layout, at most ``size`` and :data:`MAX_ARRAY_BYTES` bytes) before anything is allocated."""
    try:
        version = np.lib.format.read_magic(handle)
        if version not in _HEADER_READERS:  # 3.0 only holds structured arrays with non-Latin-1 field names
            raise MnistgenError(f"{where}: not a .npy array mnistgen reads (format version {version[0]}."
                                f"{version[1]}; save the array with numpy.save)")
        shape, fortran_order, dtype = _HEADER_READERS[version](handle)
    except (ValueError, OSError, EOFError, SyntaxError, tokenize.TokenError):  # what numpy's header parser meets
        raise MnistgenError(f"{where}: not a .npy file (not a readable .npy array)") from None
    if dtype.hasobject:
        raise MnistgenError(f"{where}: not a .npy file (holds pickled objects)")
    check_layout(dtype, shape, where)  # before anything is read
    claimed, held = math.prod(shape) * dtype.itemsize, size - handle.tell()
    if held < claimed:
        raise MnistgenError(f"{where}: not a .npy file (its header claims an array of shape {shape} and dtype {dtype}, "
                            f"{claimed:,} bytes, but only {held:,} follow it: truncated or damaged)")
    scored = math.prod(shape) * max(dtype.itemsize, 4)  # the declared bytes, or the float32 that uint8 becomes
    if scored > MAX_ARRAY_BYTES:
        raise MnistgenError(f"{where}: its header declares an array of shape {shape} and dtype {dtype}, {scored:,} "
                            f"bytes as scored; mnistgen reads arrays of at most {MAX_ARRAY_BYTES:,} bytes")
    data = handle.read(claimed)
    if len(data) != claimed:
        raise MnistgenError(f"{where}: truncated ({len(data):,} of {claimed:,} bytes)")
    array = np.frombuffer(bytearray(data), dtype)  # a bytearray: the array is writable, as np.load's
    return array.reshape(shape[::-1]).T if fortran_order else array.reshape(shape)


def load_npz_images(path: Path) -> np.ndarray:
    """The one array of an .npz archive (``numpy.savez_compressed(FILE, images=ARRAY)``), read by :func:`read_array`."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise MnistgenError(f"{path}: not a readable .npz archive") from None
    with archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        if len(members) != 1 or not members[0].filename.endswith(".npy"):
            raise MnistgenError(f"{path}: an .npz archive of {len(members)} files; mnistgen reads one array (save it "
                                "with numpy.savez_compressed(FILE, images=ARRAY), or numpy.save)")
        where = f"{path} ({members[0].filename})"
        try:
            with archive.open(members[0]) as handle:
                return read_array(handle, where, members[0].file_size)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            raise MnistgenError(f"{where}: not readable ({exc})") from None


def load_images(path: str | os.PathLike) -> np.ndarray:
    """An (N, 28, 28) array from a .npy file or an .npz archive of one array, as :func:`check_images` returns it."""
    path = Path(path)
    if not path.is_file():
        raise MnistgenError(f"{path}: no such file")
    with open(path, "rb") as handle:
        magic = handle.read(6)
        handle.seek(0)
        if magic.startswith(b"PK\x03\x04"):  # a zip: an .npz archive
            array = load_npz_images(path)
        elif magic.startswith(b"\x93NUMPY"):
            array = read_array(handle, str(path), path.stat().st_size)
        else:
            raise MnistgenError(f"{path}: not a .npy file (no NumPy header; save the array with numpy.save)")
    return check_images(array, str(path))


def save_images(path: Path, images: np.ndarray) -> None:
    """(N, 28, 28) images in [0, 1] as 8-bit levels (as MNIST's own pixels; :func:`load_images` reads them as
    level / 255) in a compressed .npz of one array: 0.5-3.5 MB for 10,000 images instead of 31 MB as float32."""
    levels = to_uint8(images)
    atomic_write(path, lambda handle: np.savez_compressed(handle, images=levels))


def score_path(images_path: str | os.PathLike) -> Path:
    """``samples.npy`` (or ``samples.npz``) -> ``samples.score.json`` beside it."""
    path = Path(images_path)
    return path.with_name((path.stem if path.suffix in (".npy", ".npz") else path.name) + ".score.json")


def shipped_weights() -> Path:
    """The weights shipped with mnistgen (their checksum lies beside them in classifier.json)."""
    return Path(str(resources.files("mnistgen") / "assets" / WEIGHTS_NAME))


def metadata_path(weights: Path) -> Path:
    return Path(weights).with_suffix(".json")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Classifier:
    model: MnistClassifier  # in eval mode, on ``device``
    sha256: str
    info: dict[str, Any]  # the .json beside the weights: sha256, test accuracy, command, ...
    device: torch.device
    path: Path


def save_classifier(weights: Path, state_dict: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, buffer)
    data = buffer.getvalue()
    atomic_write(Path(weights), lambda h: h.write(data))
    meta = {"file": Path(weights).name, "sha256": sha256_bytes(data), "bytes": len(data), **info}
    write_json(metadata_path(weights), meta)
    return meta


def load_classifier(weights: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> Classifier:
    """Load and checksum-verify the classifier (default: the shipped weights); any problem is one line."""
    path = Path(weights).expanduser() if weights else shipped_weights()
    meta_file = metadata_path(path)
    if not path.is_file():
        raise MnistgenError(f"{path}: no classifier weights here")
    if not meta_file.is_file():
        raise MnistgenError(f"{path}: no checksum file {meta_file.name} beside it (made by score-classifier train)")
    info = read_json(meta_file)
    expected = info.get("sha256") if isinstance(info, dict) else None
    if not isinstance(expected, str):
        raise MnistgenError(f"{meta_file}: no \"sha256\" entry")
    data = path.read_bytes()
    digest = sha256_bytes(data)
    if digest != expected:
        raise MnistgenError(f"{path}: checksum mismatch (SHA-256 {digest[:16]}..., expected {expected[:16]}... "
                            f"from {meta_file.name}): the weights file is corrupt or was replaced")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        model = MnistClassifier()
        model.load_state_dict(state)
    except Exception as exc:  # torch raises many types for a bad file or mismatched keys
        raise MnistgenError(f"{path}: not weights of mnistgen's classifier ({type(exc).__name__})") from None
    device = torch.device(device)
    return Classifier(model.to(device).eval(), digest, info, device, path)


@torch.no_grad()
def classify(classifier: Classifier, images: np.ndarray | torch.Tensor, batch_size: int = DEFAULT_BATCH_SIZE,
             description: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) images in [0, 1] -> features (N, 128) and probabilities p(y|x) (N, 10), float64; with a
    ``description``, a progress bar (on a terminal) of that title."""
    from .progress import progress

    images = torch.as_tensor(images)
    features = np.empty((len(images), FEATURE_DIM), np.float64)
    probabilities = np.empty((len(images), NUM_CLASSES), np.float64)
    bar = progress(-(-len(images) // batch_size), description or "", enabled=None if description else False)
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(classifier.device, torch.float32)
        batch = batch.reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)  # (B, 1, 28, 28)
        batch_features = classifier.model.features(batch)  # (B, 128)
        logits = classifier.model.logits(batch_features)  # (B, 10); eval mode: batch norm running statistics
        # float64 on the CPU (MPS has no float64): softmax and statistics in double precision
        features[start:start + len(batch)] = batch_features.cpu().double().numpy()
        probabilities[start:start + len(batch)] = torch.softmax(logits.cpu().double(), dim=1).numpy()
        bar.update(1)
    bar.close()
    return features, probabilities


def accuracy(classifier: Classifier, images: np.ndarray | torch.Tensor, labels: np.ndarray,
             batch_size: int = DEFAULT_BATCH_SIZE) -> float:
    _, probabilities = classify(classifier, images, batch_size)
    return float((probabilities.argmax(axis=1) == np.asarray(labels)).mean())


@dataclass(frozen=True)
class SetScore:
    """The numbers of one set of images, as a score file holds them for its images and for the reference."""

    n_images: int
    frechet_distance: float | None  # None where the file holds null (a NaN)
    classifier_score: float | None
    class_histogram: tuple[int, ...]  # (10,): how many images the classifier assigns to each digit

    @property
    def balance(self) -> dict[str, float]:  # the classes' distance from uniform, :func:`class_balance`
        return class_balance(self.class_histogram)

    def as_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(SetScore)} | {
            "class_histogram": list(self.class_histogram)} | self.balance


@dataclass(frozen=True)
class Reference(SetScore):
    """The score of the last 10k real training images against the 10k test images, and the test images' features."""

    test_mean: np.ndarray  # (128,) float64
    test_cov: np.ndarray  # (128, 128) float64
    test_classifier_score: float  # of the test images themselves
    key: str  # the cache key: classifier checksum and checksums of the images' bytes


def _reference_key(classifier: Classifier, reference_images: np.ndarray, test_images: np.ndarray) -> str:
    parts = [REFERENCE_VERSION, classifier.sha256, sha256_bytes(np.ascontiguousarray(reference_images).tobytes()),
             sha256_bytes(np.ascontiguousarray(test_images).tobytes())]
    return sha256_bytes("\n".join(parts).encode())


def _reference_file(key: str) -> Path:
    return cache_root() / "score" / f"reference-{key[:24]}.npz"


def _read_cached_reference(path: Path, key: str) -> Reference | None:
    """The cached reference, or None if absent or unreadable (then it is recomputed and rewritten)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as cached:
            if str(cached["key"]) != key:
                return None
            return Reference(REFERENCE_TRAIN_IMAGES, float(cached["frechet_distance"]),
                             float(cached["classifier_score"]), tuple(cached["class_histogram"].astype(int).tolist()),
                             cached["test_mean"], cached["test_cov"], float(cached["test_classifier_score"]), key)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def compute_reference(classifier: Classifier, raw: RawData, batch_size: int = DEFAULT_BATCH_SIZE) -> Reference:
    if raw.provenance.get("sample") or len(raw.train_images) < REFERENCE_TRAIN_IMAGES:
        reason = raw.provenance.get("fallback_reason") or f"{len(raw.train_images):,} training images"
        raise MnistgenError(f"the score's real-vs-real reference needs full MNIST, not a sample ({reason}); "
                            "run `mnistgen data fetch` or pass --data-dir")
    reference_images = raw.train_images[-REFERENCE_TRAIN_IMAGES:]
    key = _reference_key(classifier, reference_images, raw.test_images)
    path = _reference_file(key)
    cached = _read_cached_reference(path, key)
    if cached is not None:
        return cached
    test_features, test_probabilities = classify(classifier, check_images(raw.test_images), batch_size,
                                                 "real-vs-real reference (once, then cached): test images")
    train_features, train_probabilities = classify(classifier, check_images(reference_images), batch_size,
                                                   "real-vs-real reference (once, then cached): training images")
    test_mean, test_cov = feature_statistics(test_features)
    train_distance = frechet_distance(*feature_statistics(train_features), test_mean, test_cov)
    reference = Reference(REFERENCE_TRAIN_IMAGES, train_distance, classifier_score(train_probabilities),
                          tuple(class_histogram(train_probabilities)), test_mean, test_cov,
                          classifier_score(test_probabilities), key)
    arrays = {field.name: np.array(getattr(reference, field.name)) for field in dataclasses.fields(Reference)}
    atomic_write(path, lambda h: np.savez(h, **arrays))
    return reference


def reference_statistics(classifier: Classifier, data: DataConfig | None = None,
                         batch_size: int = DEFAULT_BATCH_SIZE) -> Reference:
    """The cached reference of full MNIST as ``data`` says. Missing files that cannot be had are one line with the
    reason, not the 5,000-digit stand-in's warning (naming a --dataset flag that score lacks) and its refusal."""
    data = data if data is not None else DataConfig()
    if data.dataset != "mnist":
        raise MnistgenError(f"the score's reference is real MNIST, not {data.dataset}")
    store = VerdictStore(cache_root())
    try:
        obtain_files(get_dataset("mnist"), data, store)  # finds and verifies the files, or downloads what is missing
    except FilesUnavailable as exc:  # one line, not each mirror's failure (each is said as it happens)
        where, _, why = str(exc).removeprefix("mnist: ").partition(", and the download failed: ")
        why = "offline mode is on" if offline_requested(data) else why
        raise FilesUnavailable(f"the score needs full MNIST (its test images and 10,000 training images): "
                               f"{where.split(', and ')[0]}, and {why}; run `mnistgen data fetch` or pass "
                               "--data-dir=FOLDER that holds its files") from None
    finally:
        store.save()
    # every file is there and verified now (the verdicts are remembered: no second hashing)
    return compute_reference(classifier, load_raw(data), batch_size)


def score_images(images: np.ndarray, classifier: Classifier | None = None, reference: Reference | None = None,
                 config: ScoreConfig | None = None) -> dict[str, Any]:
    """Score (N, 28, 28) images in [0, 1] against MNIST; returns the JSON-ready report. ``classifier`` and
    ``reference`` are loaded as ``config`` says unless given (to score many arrays without reloading them)."""
    from .device import resolve_device

    config = config if config is not None else ScoreConfig()
    images = check_images(images)
    if classifier is None:
        classifier = load_classifier(config.weights, resolve_device(config.device))
    if reference is None:
        reference = reference_statistics(classifier, config.data, config.batch_size)
    features, probabilities = classify(classifier, images, config.batch_size, "scoring")
    mean, cov = feature_statistics(features)
    numbers = SetScore(len(images), frechet_distance(mean, cov, reference.test_mean, reference.test_cov),
                       classifier_score(probabilities), tuple(class_histogram(probabilities)))
    return {
        **numbers.as_json(),
        REFERENCE_KEY: {"what": f"the last {REFERENCE_TRAIN_IMAGES:,} MNIST training images (the shipped classifier's "
                                "held-out validation images) against the 10,000 test images",
                        **reference.as_json(), "test_images_classifier_score": reference.test_classifier_score},
        "classifier": {"sha256": classifier.sha256, "test_accuracy": classifier.info.get("test_accuracy"),
                       "feature_dim": FEATURE_DIM, "file": str(classifier.path)},
        "mnistgen_version": __version__,
    }


def format_report(report: dict[str, Any], name: str) -> str:
    reference = report[REFERENCE_KEY]
    histogram = "  ".join(f"{digit}:{count}" for digit, count in enumerate(report["class_histogram"]))
    reference_histogram = "  ".join(f"{digit}:{count}" for digit, count in enumerate(reference["class_histogram"]))
    lines = [
        f"{name}: {report['n_images']:,} images, scored by mnistgen's MNIST classifier "
        f"(sha256 {report['classifier']['sha256'][:12]})",
        f"{'':28}{'these images':>14}{'real vs real':>14}",
        f"{'Frechet distance (lower)':28}{report['frechet_distance']:14.3f}{reference['frechet_distance']:14.3f}",
        f"{'classifier score (max 10)':28}{report['classifier_score']:14.3f}{reference['classifier_score']:14.3f}",
        *(f"{label:28}{report[key]:14.3f}{reference[key]:14.3f}" for key, label in BALANCE_LABELS.items()),
        f"predicted classes:  {histogram}",
        f"real (10k train):   {reference_histogram}",
        f"real vs real: {reference['what']}",
    ]
    if report["n_images"] < reference["n_images"]:
        lines.append(f"note: {report['n_images']:,} images against a reference of {reference['n_images']:,}: the "
                     "Frechet distance grows as N shrinks, so compare sets of equal size")
    return "\n".join(lines)


def write_report(images_path: str | os.PathLike, report: dict[str, Any]) -> Path:
    """The score of :func:`score_images` as FILE.score.json beside the images (:func:`read_score` reads it)."""
    path = score_path(images_path)
    write_json(path, {"file": str(Path(images_path).name), **report})
    return path


@dataclass(frozen=True)
class ReferenceScore(SetScore):
    what: str = ""  # which real images against which


@dataclass(frozen=True)
class ScoreFile(SetScore):
    """A FILE.score.json as :func:`write_report` writes it and :func:`read_score` reads it back."""

    reference: ReferenceScore | None = None  # the real-vs-real reference scored beside the images
    classifier: dict[str, Any] | None = None  # the classifier that scored them: its checksum, test accuracy, ...


JSON_TYPES = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object",
              type(None): "null"}  # the JSON names of Python's types, for messages (bool before int: True is an int)


def json_type(value: Any) -> str:
    return next((name for kind, name in JSON_TYPES.items() if isinstance(value, kind)), type(value).__name__)


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


SET_SCORE_CHECKS = {  # each field of a SetScore in a score file: (does a value fit, what it must be)
    "n_images": (is_count, "a count of images"),
    "frechet_distance": (lambda value: value is None or is_number(value), "a number"),
    "classifier_score": (lambda value: value is None or is_number(value), "a number"),
    "class_histogram": (lambda value: isinstance(value, list), "a list of counts"),
}


def set_score_fields(value: Any, where: str = "") -> dict[str, Any]:
    """The fields of a :class:`SetScore` from a score file's object (``where``: its key, "" for the file's own)."""
    if not isinstance(value, dict):
        raise MnistgenError(f'"{where}" is {json_type(value)}, not an object' if where
                            else f"it holds {json_type(value)}, not an object")
    name = lambda key: f'"{where}.{key}"' if where else f'"{key}"'  # noqa: E731
    for key, (fits, expected) in SET_SCORE_CHECKS.items():
        if key not in value:
            raise MnistgenError(f"no {name(key)}")
        if not fits(value[key]):
            raise MnistgenError(f"{name(key)} is {json_type(value[key])}, not {expected}")
    wrong = [entry for entry in value["class_histogram"] if not is_count(entry)]
    if wrong:
        raise MnistgenError(f"{name('class_histogram')} holds {json_type(wrong[0])} {json.dumps(wrong[0])[:20]}, "
                            "not a count")
    return {**{key: value[key] for key in SET_SCORE_CHECKS}, "class_histogram": tuple(value["class_histogram"])}


def read_score(path: Path) -> ScoreFile:
    """A FILE.score.json written by mnistgen score; anything else is one line naming the file and the field."""
    value = read_json(path)
    try:
        numbers, reference = set_score_fields(value), None
        if REFERENCE_KEY in value:
            reference = ReferenceScore(**set_score_fields(value[REFERENCE_KEY], REFERENCE_KEY),
                                       what=value[REFERENCE_KEY].get("what", ""))
            if not isinstance(reference.what, str):
                raise MnistgenError(f'"{REFERENCE_KEY}.what" is {json_type(reference.what)}, not a string')
        if "classifier" in value and not isinstance(value["classifier"], dict):
            raise MnistgenError(f'"classifier" is {json_type(value["classifier"])}, not an object')
        return ScoreFile(**numbers, reference=reference, classifier=value.get("classifier"))
    except MnistgenError as problem:
        raise MnistgenError(f"{path}: not a score written by mnistgen score ({problem}); score the images again or "
                            "remove the file") from None
