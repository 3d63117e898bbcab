"""Seeds as replicas: one run folder RUN holding one single-seed run folder per seed, RUN/seed=N.

(Provisional: each replica is trained in turn with the single-seed loop; the batched engine replaces this.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..config import GANConfig, VAEConfig, replica_config, replica_seeds, to_dict, validate
from ..runs import RunDir


def train_vae_replicas(config: VAEConfig, run: RunDir, *, resume: bool = False, protocol: Any = None,
                       stop: Callable[[], bool] | None = None, show_progress: bool | None = None,
                       say: Callable[[str], None] | None = None) -> dict[int, list[dict[str, Any]]]:
    from .vae import train_vae

    validate(config)
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_config(to_dict(config), kind="vae")
    return {seed: train_vae(replica_config(config, seed), run.seed_run(seed), resume=resume and
                            run.seed_run(seed).checkpoint.is_file(), protocol=protocol, stop=stop,
                            show_progress=show_progress, say=say)
            for seed in replica_seeds(config)}


def train_gan_replicas(config: GANConfig, images: torch.Tensor, run: RunDir, *, resume: bool = False,
                       provenance: dict[str, Any] | None = None, stop: Callable[[], bool] | None = None,
                       show_progress: bool | None = None,
                       say: Callable[[str], None] | None = None) -> dict[int, list[dict[str, Any]]]:
    from .gan import train_gan

    validate(config)
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_config(to_dict(config), kind="gan")
    return {seed: train_gan(replica_config(config, seed), images, run.seed_run(seed), resume=resume and
                            run.seed_run(seed).checkpoint.is_file(), provenance=provenance, stop=stop,
                            show_progress=show_progress, say=say)
            for seed in replica_seeds(config)}
