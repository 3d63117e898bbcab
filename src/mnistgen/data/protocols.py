"""The training protocols of SPEC §2 and §3, each loaded once into contiguous float32 tensors that
own their storage: ``hw`` (VAE: the first 10,000 training images, binarized once; (N, 784)), ``full`` (VAE: gray
levels, binarized afresh each use by :func:`binarize_batch`; validation and test once, seeded; (N, 784)) and ``gan``
(all training images in [0, 1], (N, 1, 28, 28)).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from ..errors import DataError
from .registry import IMAGE_SHAPE
from .sources import RawData

HW_TRAIN_SIZE = 10_000
EVAL_BINARIZATION_SEED = 0  # fixes the one-time binarization of the full protocol's evaluation sets
PROTOCOLS = ("hw", "full", "gan")


@dataclass(frozen=True)
class Protocol:
    """Tensors of one protocol (on CPU; move with :meth:`to`)."""

    name: Literal["hw", "full", "gan"]
    train_images: torch.Tensor  # (N, 784) for hw/full, (N, 1, 28, 28) for gan; float32
    train_labels: torch.Tensor  # (N,) int64
    eval_images: torch.Tensor  # what "test_elbo" is measured on: test (hw) or validation (full)
    eval_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    dynamic_binarization: bool  # True: train_images hold probabilities; binarize each batch
    eval_name: str  # "test" or "validation"
    provenance: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device) -> Protocol:
        return replace(self, **{k: getattr(self, k).to(device) for k in (
            "train_images", "train_labels", "eval_images", "eval_labels", "test_images", "test_labels")})


def to_unit(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 in [0, 1] (SPEC §1: divided by 255), flattened to (N, 784)."""
    flat = images_uint8.reshape(len(images_uint8), -1).astype(np.float32)  # a writable, contiguous copy
    return torch.from_numpy(flat).div_(255.0)


def round_binarize(images: torch.Tensor) -> torch.Tensor:
    """SPEC §2: pixel >= 0.5 -> 1, else 0."""
    return (images >= 0.5).float()


def binarize_batch(probabilities: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dynamic binarization: x ~ Bernoulli(pixel), drawn anew at each call (same shape, float32)."""
    return torch.bernoulli(probabilities, generator=generator)


def _labels(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))


def load_protocol(name: str, raw: RawData, validation_size: int = 10_000) -> Protocol:
    total, test_labels = len(raw.train_images), _labels(raw.test_labels)
    if name == "hw":
        n = min(HW_TRAIN_SIZE, total)
        train = round_binarize(to_unit(raw.train_images[:n]))
        test = round_binarize(to_unit(raw.test_images))
        return Protocol("hw", train, _labels(raw.train_labels[:n]), test, test_labels, test, test_labels,
                        dynamic_binarization=False, eval_name="test",
                        provenance=_provenance(raw, "hw", train=n, eval=len(test)))
    if name == "full":
        if not 0 < validation_size < total:
            raise DataError(f"--validation-size must be between 1 and {total - 1} for the {total:,} training "
                            f"images of {raw.provenance.get('dataset', 'this dataset')}, got {validation_size}")
        cut = total - validation_size
        generator = torch.Generator().manual_seed(EVAL_BINARIZATION_SEED)
        validation = binarize_batch(to_unit(raw.train_images[cut:]), generator)
        test = binarize_batch(to_unit(raw.test_images), generator)
        return Protocol("full", to_unit(raw.train_images[:cut]), _labels(raw.train_labels[:cut]),
                        validation, _labels(raw.train_labels[cut:]), test, test_labels,
                        dynamic_binarization=True, eval_name="validation",
                        provenance=_provenance(raw, "full", train=cut, eval=validation_size))
    if name == "gan":
        train = to_unit(raw.train_images).view(-1, 1, *IMAGE_SHAPE)
        test = to_unit(raw.test_images).view(-1, 1, *IMAGE_SHAPE)
        return Protocol("gan", train, _labels(raw.train_labels), test, test_labels, test, test_labels,
                        dynamic_binarization=False, eval_name="test",
                        provenance=_provenance(raw, "gan", train=total, eval=len(test)))
    raise DataError(f"unknown protocol {name!r} (choose {', '.join(PROTOCOLS)})")


def _provenance(raw: RawData, name: str, train: int, eval: int) -> dict[str, Any]:  # noqa: A002
    return dict(raw.provenance, protocol=name, protocol_train_images=train, protocol_eval_images=eval)
