"""The Python API of mnistgen (docs/COMMANDS.md, "From Python"): train, load, sample, encode, decode and score.

The stable surface is ``mnistgen.__all__``. Each function does what the command of the same name does, through the same
functions: the same arrays for a seed, the same one-line message (:class:`mnistgen.MnistgenError`) for a bad value.
"""

from __future__ import annotations

import functools
import numbers
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from .config import GANConfig, GANSampleConfig, ScoreConfig, VAEConfig, VAEEvalConfig, config_from_settings, validate
from .device import resolve_device
from .errors import MnistgenError, TrainingInterrupted, UsageError
from .evaluate.gan import load_generator, sample_images
from .evaluate.replicas import first_seed
from .evaluate.vae import load_trained_vae, sample_prior
from .files import read_json, to_stderr
from .models.gan import Discriminator
from .runs import RunDir
from .scoring import check_finite_values

IMAGE_SIDE = 28
IMAGE_PIXELS = IMAGE_SIDE * IMAGE_SIDE
CHUNK = 1000  # images per forward pass of encode/decode

SCORE_NOT_SETTINGS = ("dataset", "samples")  # as ``mnistgen score``: always against real MNIST; (images, not runs)


class WrongKindError(MnistgenError, AttributeError):
    """``run.vae`` of a GAN run, ``run.generator`` of a VAE run: a one-line error (and ``hasattr`` is False)."""


_FLAG = re.compile(r"--(no-)?([a-z][a-z0-9-]*)")
_CONTINUE = re.compile(r"mnistgen (vae|gan) train --out (\S+) --resume")
Function = TypeVar("Function", bound=Callable[..., Any])


def python_words(message: str) -> str:
    """A message of the command line in the Python API's words: "continue with: mnistgen vae train --out RUN
    --resume" becomes ``mnistgen.train_vae('RUN', resume=True)``, ``--resume`` ``resume=True``, ``--no-offline``
    ``offline=False`` and ``--lr-min`` ``lr_min`` (the keyword argument of the same setting)."""
    message = _CONTINUE.sub(lambda match: f"mnistgen.train_{match[1]}({match[2]!r}, resume=True)", message)

    def keyword(match: re.Match) -> str:
        name = match[2].replace("-", "_")
        return f"{name}=False" if match[1] else "resume=True" if name == "resume" else name

    return _FLAG.sub(keyword, message)


def in_python_words(function: Function) -> Function:
    """``function`` with the one-line errors it raises (and the message of an interrupted training) in the Python
    API's words (:func:`python_words`), of the same type."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (MnistgenError, TrainingInterrupted) as exc:
            raise type(exc)(python_words(str(exc))) from None

    return wrapper  # type: ignore[return-value]


def _as_array(values: Any, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise MnistgenError(f"{what}: not an array ({exc})") from None
    if array.dtype == object:
        raise MnistgenError(f"{what}: not an array of numbers ({type(values).__name__})")
    return array


def _unit_images(images: Any, what: str = "images") -> np.ndarray:
    """(N, 28, 28) or (N, 784) images -> float32 (N, 784) in [0, 1]: floats in [0, 1], uint8 (0..255, divided by
    255 as SPEC §1 scales MNIST) or bool; anything else is a one-line error."""
    array = _as_array(images, what)
    if array.ndim not in (2, 3) or array.shape[1:] not in ((IMAGE_SIDE, IMAGE_SIDE), (IMAGE_PIXELS,)) \
            or len(array) == 0:
        raise MnistgenError(f"{what}: shape {array.shape}, expected (N, {IMAGE_SIDE}, {IMAGE_SIDE}) or "
                            f"(N, {IMAGE_PIXELS}) with N >= 1")
    if array.dtype == np.uint8:
        return array.reshape(len(array), IMAGE_PIXELS).astype(np.float32) / np.float32(255.0)
    if array.dtype == np.bool_:
        return array.reshape(len(array), IMAGE_PIXELS).astype(np.float32)
    if not np.issubdtype(array.dtype, np.floating):
        raise MnistgenError(f"{what}: dtype {array.dtype}, expected floats in [0, 1] (or uint8 0..255)")
    check_finite_values(array, what)
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise MnistgenError(f"{what}: values outside [0, 1] (min {low:.4g}, max {high:.4g})")
    return array.reshape(len(array), IMAGE_PIXELS).astype(np.float32)


class Run:
    """A trained VAE or GAN run folder, loaded: its settings, its history and its models on one device.

    Attributes:
        path: the run folder (absolute).
        kind: ``"vae"`` or ``"gan"``.
        config: the run's settings, a :class:`mnistgen.config.VAEConfig` or :class:`mnistgen.config.GANConfig`.
        metrics: one dict per completed epoch, as in ``RUN/metrics.jsonl`` (``epoch``, ``train_elbo``, ...).
        eval: ``RUN/eval.json`` (written by ``mnistgen vae eval``) as a dict, or None where there is none.
        epochs: epochs completed in the checkpoint.
        seeds: the seeds of the folder it was loaded from: a replica run's (``load_run(RUN, seed=N)`` loads another
            one), or this run's alone.
        device: the torch device the models (``vae``, or ``generator`` and ``discriminator``) are on, in eval mode.

    Build one with :func:`load_run` (or :func:`train_vae` / :func:`train_gan`, which return one)."""

    def __init__(self, path: Path, kind: str, config: Any, metrics: list[dict[str, Any]],
                 evaluation: dict[str, Any] | None, epochs: int, device: torch.device,
                 models: dict[str, torch.nn.Module], seeds: tuple[int, ...] = ()):
        self.path = path
        self.seeds = seeds or (config.seed,)
        self.kind = kind
        self.config = config
        self.metrics = metrics
        self.eval = evaluation
        self.epochs = epochs
        self.device = device
        self._models = models

    def __repr__(self) -> str:
        return (f"<mnistgen.Run {self.kind} {str(self.path)!r}: {self.epochs}/{self.config.epochs} epochs, "
                f"on {self.device}>")

    def _model(self, name: str) -> torch.nn.Module:
        if name not in self._models:
            has = " and ".join(f"run.{model}" for model in self._models)
            raise WrongKindError(f"{self.path}: a {self.kind.upper()} run has no run.{name} (it has {has})")
        return self._models[name]

    vae = property(lambda self: self._model("vae"), doc="(VAE runs) the VAE, in eval mode on :attr:`device`.")
    generator = property(lambda self: self._model("generator"),
                         doc="(GAN runs) G, in eval mode on :attr:`device`; for a run trained with ``ema_decay``, "
                             "the moving average of G's weights (as ``mnistgen gan sample`` without ``--raw``).")
    discriminator = property(lambda self: self._model("discriminator"),
                             doc="(GAN runs) D, in eval mode on :attr:`device`.")

    @in_python_words
    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """n images from the model, as ``mnistgen vae|gan sample RUN --n N``: (n, 28, 28) float32 in [0, 1].

        ``seed`` defaults to the run's training seed; the same seed on the same device gives the command's array."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
            raise UsageError(f"--n must be a positive integer, got {n!r}")  # as the command refuses --n
        n = int(n)
        try:
            validate((VAEEvalConfig if self.kind == "vae" else GANSampleConfig)(seed=seed))
        except MnistgenError as exc:
            raise UsageError(str(exc)) from None
        seed = self.config.seed if seed is None else seed
        if self.kind == "gan":
            return sample_images(self.generator, n, seed)
        _, images = sample_prior(self.vae, n, torch.Generator(device=self.device).manual_seed(seed))
        return images.reshape(n, IMAGE_SIDE, IMAGE_SIDE).float().cpu().numpy()

    @in_python_words
    @torch.inference_mode()
    def encode(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """(VAE runs) The encoder's q(z|x) = N(mean, diag(exp(logvar))) of each image.

        images: (N, 28, 28) or (N, 784), a NumPy array or a torch tensor of floats in [0, 1] (uint8 0..255 is
        divided by 255). Returns ``(mean, logvar)``, each a float32 NumPy array (N, D_z) (D_z = 2 with SPEC's
        defaults)."""
        vae = self._model_for("encode", "vae")
        x = torch.from_numpy(_unit_images(images)).to(self.device)
        means, logvars = [], []
        for start in range(0, len(x), CHUNK):
            mean, logvar = vae.encoder(x[start:start + CHUNK])
            means.append(mean.float().cpu())
            logvars.append(logvar.float().cpu())
        return torch.cat(means).numpy(), torch.cat(logvars).numpy()

    @in_python_words
    @torch.inference_mode()
    def decode(self, z: Any) -> np.ndarray:
        """(VAE runs) The decoder's pixel probabilities p(x|z): z (N, D_z) -> (N, 28, 28) float32 in [0, 1].

        z: a NumPy array or a torch tensor of finite numbers, D_z = ``run.config.latent_dim``."""
        from .evaluate.vae import decode

        vae = self._model_for("decode", "vae")
        array = _as_array(z, "z")
        latent_dim = self.config.latent_dim
        if array.ndim != 2 or array.shape[1] != latent_dim or len(array) == 0:
            raise MnistgenError(f"z: shape {array.shape}, expected (N, {latent_dim}) with N >= 1 (this run's latent "
                                f"dimension is {latent_dim})")
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise MnistgenError(f"z: dtype {array.dtype}, expected numbers")
        check_finite_values(array, "z")
        tensor = torch.from_numpy(array.astype(np.float32)).to(self.device)
        return decode(vae, tensor).reshape(len(array), IMAGE_SIDE, IMAGE_SIDE).float().cpu().numpy()

    def _model_for(self, method: str, name: str) -> torch.nn.Module:
        if self.kind != name:
            raise WrongKindError(f"{self.path}: {method} needs a VAE run, this is a {self.kind.upper()} run")
        return self._models[name]


@in_python_words
def load_run(path: str | os.PathLike, device: str | torch.device = "auto", seed: int | None = None) -> Run:
    """Load a trained run folder (``mnistgen vae train`` or ``mnistgen gan train``, or :func:`train_vae` /
    :func:`train_gan`) with its models on ``device``.

    device: ``"auto"`` (CUDA, then MPS, then the CPU), ``"cpu"``, ``"cuda"``, ``"mps"`` or a ``torch.device``.
    Returns a :class:`Run`: ``run.sample(n)`` -> (n, 28, 28), and for a VAE ``run.encode(images)`` -> (mean, logvar),
    each (N, D_z), and ``run.decode(z)`` -> (N, 28, 28).

    A replica run (``--replicas`` / ``--seeds``) holds one run per seed, RUN/seed=N: ``seed=N`` loads that one;
    without it, the first seed's is loaded, with a note on stderr. ``run.seeds`` lists the folder's seeds (one for
    a single-seed run)."""
    top = RunDir(path).require()
    seeds = tuple(replica for replica, _ in top.replicas())
    if seed is None:
        run = first_seed(top, "loading", say=to_stderr, another="load_run(RUN, seed=N) loads another")
    elif seed in seeds:
        run = top.seed_run(int(seed))
    elif seeds:
        raise MnistgenError(f"{top.path}: no replica of seed {seed!r} here (its seeds: {', '.join(map(str, seeds))})")
    else:
        raise MnistgenError(f"{top.path}: a single-seed run; seed= chooses one seed of a replica run")
    kind = run.read_config().get("kind")
    if kind == "reproduce":
        raise MnistgenError(f"{run.path}: a reproduction folder; load one of its runs: {run.path / 'vae'} or "
                            f"{run.path / 'gan'}")
    if kind not in ("vae", "gan"):
        raise MnistgenError(f"{run.path}: a {kind!r} run folder, not a VAE or GAN run")
    if not isinstance(device, str | torch.device):
        raise UsageError(f"--device must be one of auto, cpu, cuda, mps, got {device!r}")
    resolved = device if isinstance(device, torch.device) else resolve_device(device)
    if kind == "vae":
        trained = load_trained_vae(run, "cpu")  # then moved: ``device`` may be a torch.device ("cuda:1")
        config, epochs, models = trained.config, trained.epochs, {"vae": trained.model.to(resolved)}
    else:
        generator, config = load_generator(run, resolved)
        state = run.load_checkpoint(map_location="cpu")
        discriminator = Discriminator()
        try:
            discriminator.load_state_dict(state["discriminator"])
        except (KeyError, RuntimeError) as exc:
            raise MnistgenError(f"{run.checkpoint}: discriminator weights that do not fit the run's config "
                                f"({type(exc).__name__})") from None
        epochs = int(state.get("epoch", 0))
        models = {"generator": generator, "discriminator": discriminator.to(resolved).eval()}
    evaluation = read_json(run.eval) if run.eval.is_file() else None
    return Run(run.path, kind, config, run.read_metrics(), evaluation, epochs, resolved, models, seeds)


@in_python_words
def load_pretrained(name: str, device: str | torch.device = "auto") -> Run:
    """A trained model shipped with mnistgen (``mnistgen pretrained list`` names them) as :func:`load_run` loads a run
    folder: exported (:func:`mnistgen.pretrained.export`) into the user cache, then loaded with its models on
    ``device``; offline. ``run.sample(n)`` -> (n, 28, 28), as for any run of its kind."""
    from .pretrained import cached_run

    return load_run(cached_run(name), device)


def finished_run(run: RunDir, kind: str, config: Any) -> Run | None:
    """Where ``run`` holds a run already (and no resume was asked for): that run, loaded, if it is ``config``'s and
    finished, with a note (so a notebook's cell can be run again); else a one-line error naming the settings that
    differ, or how to continue an unfinished one. None where the folder holds no run yet."""
    from .config import changed_settings, fixed_settings_changed

    if not (run.checkpoint.is_file() or run.replicas_commit.is_file()):
        return None
    saved = run.read_config_as(kind, type(config), f"a {kind.upper()} run")
    differ = changed_settings(saved, config)
    if differ:
        names = "; ".join(f"{name}: {then!r} there, {now!r} here" for name, then, now in differ)
        hint = "" if fixed_settings_changed(saved, config) else " (resume=True continues it with these)"
        raise MnistgenError(f"{run.path} holds a {kind.upper()} run with other settings ({names}){hint}; give its "
                            "settings, or another out")
    loaded = load_run(run.path, config.device)
    if loaded.epochs < config.epochs:
        raise MnistgenError(f"{run.path} holds this run, unfinished ({loaded.epochs} of {config.epochs} epochs): "
                            "resume=True continues it")
    to_stderr(f"mnistgen: note: {run.path} holds this run, finished: it is returned as it is")
    return loaded


@in_python_words
def train_vae(out: str | os.PathLike, *, resume: bool = False, show_progress: bool | None = None,
              stop: Callable[[], bool] | None = None, **settings: Any) -> Run:
    """Train the VAE into the run folder ``out``, as ``mnistgen vae train --out OUT``; return :func:`load_run` (out).

    settings: one keyword per flag of ``mnistgen vae train`` (the fields of :class:`mnistgen.config.VAEConfig`,
    and of its DataConfig: ``epochs=1, hidden=100, dataset="mnist-sample", data_dir=..., device="cpu"``); the rest
    keep their defaults (SPEC's hw protocol: 10,000 images (N, 784) in {0, 1}, batch 100, 200 epochs, seed 1234).
    A name that is no flag, or a value the flag would refuse, is a one-line :class:`mnistgen.MnistgenError`.

    resume: as ``--resume``. Without it, a folder that holds this run finished (the same settings) gives that run
    back, with a note: a notebook's cell may be run again; other settings are a one-line error naming them.
    show_progress: a progress bar on stderr (None: only on a terminal). Ctrl-C (a notebook's interrupt) saves the
    state after the current step and raises :class:`mnistgen.errors.TrainingInterrupted` (a ``KeyboardInterrupt``);
    stop: polled before every step instead of Ctrl-C; True stops the run as Ctrl-C does.

    Returns the :class:`Run`, its VAE on the device it trained on: ``run.sample(n)`` -> (n, 28, 28),
    ``run.encode(images (N, 28, 28))`` -> (mean, logvar), each (N, D_z); ``run.decode(z (N, D_z))`` -> (N, 28, 28)."""
    from .train.vae import train_vae as train

    run = RunDir(out)
    base = run.read_config_to_resume("vae", VAEConfig) if resume else None
    config = config_from_settings(VAEConfig, settings, base, "train_vae")
    finished = None if resume else finished_run(run, "vae", config)
    if finished is None:
        train(config, run, resume=resume, show_progress=show_progress, stop=stop)
    return finished or load_run(run.path, config.device)


@in_python_words
def train_gan(out: str | os.PathLike, *, resume: bool = False, show_progress: bool | None = None,
              stop: Callable[[], bool] | None = None, **settings: Any) -> Run:
    """Train the GAN into the run folder ``out``, as ``mnistgen gan train --out OUT``; return :func:`load_run` (out).

    settings: one keyword per flag of ``mnistgen gan train`` (the fields of :class:`mnistgen.config.GANConfig`,
    and of its DataConfig: ``epochs=1, dataset="mnist-sample", data_dir=..., grid_every=1``); the rest keep their
    defaults (SPEC §3: the 60,000 training images (N, 1, 28, 28) in [0, 1], batch 256, z ~ U[-1, 1]^64, 100 epochs,
    seed 2). A name that is no flag, or a value the flag would refuse, is a one-line :class:`mnistgen.MnistgenError`.

    resume, show_progress, stop: as in :func:`train_vae`.

    Returns the :class:`Run`, its G and D on the device it trained on: ``run.sample(n)`` -> G(z), (n, 28, 28)."""
    run = RunDir(out)
    base = run.read_config_to_resume("gan", GANConfig) if resume else None
    config = config_from_settings(GANConfig, settings, base, "train_gan")
    finished = None if resume else finished_run(run, "gan", config)
    if finished is None:
        train_gan_into(run, config, resume, show_progress, stop)
    return finished or load_run(run.path, config.device)


def train_gan_into(run: RunDir, config: GANConfig, resume: bool, show_progress: bool | None = None,
                   stop: Callable[[], bool] | None = None) -> list | dict:
    """Train ``config`` into ``run`` as ``mnistgen gan train`` does, also under torchrun: the folder is checked (by
    rank 0) before the data are loaded (:func:`mnistgen.distributed.main_rank_first`)."""
    from .data.protocols import load_protocol
    from .data.sources import load_raw
    from .distributed import from_main_rank, main_rank_first
    from .train.common import check_run_folder
    from .train.gan import train_gan

    from_main_rank(lambda: check_run_folder(run, resume, "gan", config, say=lambda line: None) and None)
    protocol = main_rank_first(lambda: load_protocol("gan", load_raw(config.data)))
    return train_gan(config, protocol.train_images, run, resume=resume, provenance=protocol.provenance,
                     show_progress=show_progress, stop=stop)


@in_python_words
def score(images: Any, **settings: Any) -> dict[str, Any]:
    """How close a set of images is to MNIST, as ``mnistgen score F.npy``: the dict it writes to F.score.json
    (without its ``"file"`` entry).

    images: (N, 28, 28) with N >= 2, a NumPy array (or a torch tensor) of float32/float64 in [0, 1], or uint8
    0..255 (divided by 255). settings: the flags of ``mnistgen score`` (``weights``, ``batch_size``, ``device``,
    ``data_dir``, ``offline``, ...). Returns ``{"n_images", "frechet_distance", "classifier_score", "class_histogram"
    (10 counts), "class_tv_distance", "min_class_share", "real_vs_real_reference" {...}, "classifier" {...}, ...}``.
    The real-vs-real reference needs full MNIST (found as ``mnistgen score`` finds it; computed once, then cached)."""
    from .scoring import score_images

    config = config_from_settings(ScoreConfig, settings, None, "score", exclude=SCORE_NOT_SETTINGS)
    array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
    return score_images(array, config=config)  # checked as the CLI checks a file's array (uint8: level / 255)
