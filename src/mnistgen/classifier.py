"""Training the classifier of ``mnistgen score`` on the training split only (validation carved from its end, as
:class:`mnistgen.config.ClassifierConfig` says); the 10k test images are touched once, at the end, to report the
accuracy shipped with the weights."""

from __future__ import annotations

import copy
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .config import ClassifierConfig, to_dict
from .data.batches import num_batches, shuffled_batches
from .data.sources import RawData
from .device import seed_everything
from .errors import DataError
from .models.classifier import IMAGE_SIZE, MnistClassifier
from .progress import progress
from .runs import RunDir, environment
from .train.common import check_finite


@dataclass
class ClassifierResult:
    state_dict: dict[str, torch.Tensor]  # the weights of the best validation epoch, on CPU
    best_epoch: int
    validation_accuracy: float
    history: list[dict[str, Any]] = field(default_factory=list)


def _unit_images(images_uint8) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1]."""
    return torch.from_numpy(images_uint8.astype("float32") / 255.0).view(-1, 1, IMAGE_SIZE, IMAGE_SIZE)


@torch.no_grad()
def _accuracy(model: MnistClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start:start + batch_size])
        correct += int((logits.argmax(dim=1) == labels[start:start + batch_size]).sum())
    return correct / len(images)


def train_classifier(config: ClassifierConfig, raw: RawData, device: torch.device,
                     run: RunDir | None = None, show_progress: bool | None = None) -> ClassifierResult:
    total = len(raw.train_images)
    if not 0 < config.validation_size < total:
        raise DataError(f"--validation-size must be between 1 and {total - 1}, got {config.validation_size}")
    generator = seed_everything(config.seed)
    images = _unit_images(raw.train_images).to(device)  # (60000, 1, 28, 28)
    labels = torch.from_numpy(raw.train_labels).to(device)
    cut = total - config.validation_size
    train_images, train_labels = images[:cut], labels[:cut]
    validation_images, validation_labels = images[cut:], labels[cut:]

    model = MnistClassifier().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps_per_epoch = num_batches(cut, config.batch_size, drop_last=False)
    total_steps = steps_per_epoch * config.epochs
    # cosine decay from lr to 0 over the whole run, one step per batch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)))

    history: list[dict[str, Any]] = []
    best_accuracy, best_epoch, best_state = -1.0, 0, None
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        with progress(steps_per_epoch, f"classifier epoch {epoch}/{config.epochs}", show_progress) as bar:
            for step, index in enumerate(shuffled_batches(cut, config.batch_size, generator)):
                index = index.to(device)
                batch, target = train_images[index], train_labels[index]  # (B, 1, 28, 28), (B,)
                logits = model(batch)
                loss = F.cross_entropy(logits, target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                loss_value = loss.item()
                check_finite(loss_value, "classifier loss", epoch, step)
                loss_sum += loss_value * len(index)
                correct += int((logits.argmax(dim=1) == target).sum())
                seen += len(index)
                bar.update(1)
        validation_accuracy = _accuracy(model, validation_images, validation_labels, 1000)
        record = {"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                  "validation_accuracy": validation_accuracy, "seconds": time.perf_counter() - started}
        history.append(record)
        if run is not None:
            run.append_metrics(record)
        print(f"epoch {epoch}: train loss {record['train_loss']:.4f}, validation accuracy "
              f"{validation_accuracy:.4f} ({record['seconds']:.0f} s)", file=sys.stderr)
        if validation_accuracy > best_accuracy:
            best_accuracy, best_epoch = validation_accuracy, epoch
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return ClassifierResult(best_state, best_epoch, best_accuracy, history)


def train_and_save(config: ClassifierConfig, out: str, raw: RawData, device: torch.device,
                   argv: list[str] | None = None) -> dict[str, Any]:
    """Train, measure the test accuracy once, write OUT/classifier.pt and .json (to ship: copy to mnistgen/assets/)."""
    from .files import write_json
    from .scoring import WEIGHTS_NAME, accuracy, load_classifier, metadata_path, save_classifier

    run = RunDir(out)
    run.path.mkdir(parents=True, exist_ok=True)
    run.metrics.unlink(missing_ok=True)  # a fresh run: no resume for a few-minute job
    run.write_config(to_dict(config), kind="classifier")
    result = train_classifier(config, raw, device, run)
    weights = run.path / WEIGHTS_NAME
    command = "mnistgen " + shlex.join(argv) if argv is not None else None
    info = {"architecture": "MnistClassifier (mnistgen.models.classifier)", "best_epoch": result.best_epoch,
            "validation_accuracy": result.validation_accuracy, "command": command, "config": to_dict(config),
            "environment": environment()}
    meta = save_classifier(weights, result.state_dict, info)
    classifier = load_classifier(weights, device)  # read back through the checksum, as scoring will
    meta["test_accuracy"] = accuracy(classifier, _unit_images(raw.test_images), raw.test_labels)
    meta["test_images"] = len(raw.test_images)
    write_json(metadata_path(weights), meta)
    return meta
