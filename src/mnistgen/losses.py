"""Training objectives as pure functions of tensors (no modules, no state).

GAN (SPEC §3): binary cross-entropy on the discriminator's logits. D is trained towards 1 on real
and 0 on generated images; G uses the non-saturating loss -log D(G(z)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Mean BCE of D: -[log D(x) + log(1 - D(G(z)))], averaged over the real and the fake batch each.

    Shapes: real_logits (B, 1) or (B,), fake_logits likewise. Returns a scalar: the sum of the two means.
    """
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating G loss: mean of -log D(G(z)) = BCE(logits, 1). Scalar."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
