"""Small pure functions that the product and the checks of SPEC §4 share.

``kl_diag_gaussians`` is the closed-form KL used by the analytic ELBO (Eq. 1).
"""

from __future__ import annotations

import torch


def kl_diag_gaussians(mu_q: torch.Tensor, logvar_q: torch.Tensor,
                      mu_p: torch.Tensor | float = 0.0, logvar_p: torch.Tensor | float = 0.0) -> torch.Tensor:
    """KL(N(mu_q, diag exp(logvar_q)) || N(mu_p, diag exp(logvar_p))), summed over the last dim.

    Per dimension: log(s_p/s_q) + (s_q^2 + (mu_q - mu_p)^2) / (2 s_p^2) - 1/2.
    Shapes: mu_q, logvar_q (B, D); mu_p, logvar_p broadcastable (default: the prior N(0, I)). -> (B,)
    """
    mu_p = torch.as_tensor(mu_p, dtype=mu_q.dtype, device=mu_q.device)
    logvar_p = torch.as_tensor(logvar_p, dtype=mu_q.dtype, device=mu_q.device)
    per_dim = 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1.0)
    return per_dim.sum(dim=-1)
