"""The center weighting of AutoAssign (paper Sec. 3.2, Eq. 1): a category-wise Gaussian of the
offset between a location and its object's box centre, in strides of the location's level."""
import torch
from torch import Tensor, nn

from anchor_free.config import ConfigKey, check_choice, check_min

from .config import CENTER_PRIOR_CHOICES

__all__ = ["CenterPrior", "gaussian_prior"]


def gaussian_prior(offsets: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """
    ``prod_{x, y} exp(-(d - mu)^2 / (2 sigma^2))`` of each pair.

    Args:
        offsets: (P, 2) d; mu, sigma: (P, 2), gathered per pair.
    Returns:
        (P,)
    """
    return torch.exp(-((offsets - mu) ** 2) / (2 * sigma**2)).prod(dim=1)


class _GaussianPrior(torch.autograd.Function):
    """:func:`gaussian_prior` with per-row parameters gathered by ``rows``, and its gradient
    with respect to the (rows, 2) ``mu`` and ``sigma`` written out (``d G / d mu = G (d - mu) /
    sigma^2``, ``d G / d sigma = G (d - mu)^2 / sigma^3``, summed per row): the autograd graph
    keeps the (M, 2) offsets and the (M,) output instead of about ten (M, 2) intermediates. In
    chunks of ``CHUNK`` pairs, so the temporaries are bounded whatever the number of pairs."""

    CHUNK = 1 << 16

    @staticmethod
    def forward(ctx, offsets: Tensor, rows: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
        parts = []
        with torch.no_grad():
            for start in range(0, offsets.shape[0], _GaussianPrior.CHUNK):
                r = rows[start : start + _GaussianPrior.CHUNK]
                parts.append(
                    gaussian_prior(
                        offsets[start : start + _GaussianPrior.CHUNK],
                        mu.index_select(0, r),
                        sigma.index_select(0, r),
                    )
                )
        prior = torch.cat(parts) if parts else offsets.new_zeros(0)
        ctx.save_for_backward(offsets, rows, mu, sigma, prior)
        return prior

    @staticmethod
    def backward(ctx, grad_prior: Tensor):
        offsets, rows, mu, sigma, prior = ctx.saved_tensors
        grad_mu = torch.zeros_like(mu) if ctx.needs_input_grad[2] else None
        grad_sigma = torch.zeros_like(sigma) if ctx.needs_input_grad[3] else None
        for start in range(0, offsets.shape[0], _GaussianPrior.CHUNK):
            end = start + _GaussianPrior.CHUNK
            r = rows[start:end]
            sigma_r = sigma.index_select(0, r)
            diff = offsets[start:end] - mu.index_select(0, r)  # (P, 2)
            g = (grad_prior[start:end] * prior[start:end])[:, None] * diff / sigma_r**2
            if grad_mu is not None:
                grad_mu.index_add_(0, r, g)
            if grad_sigma is not None:
                grad_sigma.index_add_(0, r, g.mul_(diff).div_(sigma_r))
        return None, None, grad_mu, grad_sigma


class CenterPrior(nn.Module):
    """
    ``G(d) = prod_{x, y} exp(-(d - mu_c)^2 / (2 sigma_c^2))`` (unnormalised: no
    1 / (sigma sqrt(2 pi)) factor),
    with ``d`` the signed offset (location - box centre) divided by the stride of the location's
    FPN level.

    Modes: ``per_class``: ``mu``, ``sigma`` are learnable (K, 2) parameters (released model);
    ``shared``: one learnable (1, 2) pair for all classes; ``fixed``: (1, 2), frozen at the init;
    ``none``: G = 1 (no parameters). ``freeze_mu``/``freeze_sigma`` freeze one of them.
    Frozen values stay ``nn.Parameter`` with ``requires_grad=False`` so checkpoints have the same
    keys in every mode. sigma is not clamped (as released): a sigma learned to 0 would give
    0 or NaN; ``loss_norm`` keeps the prior mass inside boxes up, which prevents that in practice.
    """

    def __init__(
        self,
        num_classes: int,
        mode: str = "per_class",
        mu_init: float = 0.0,
        sigma_init: float = 1.0,
        freeze_mu: bool = False,
        freeze_sigma: bool = False,
    ):
        """
        Args:
            num_classes: K, rows of mu and sigma in ``per_class`` mode.
            mode: one of "none", "fixed", "shared", "per_class".
            mu_init: initial mu on both axes, in strides.
            sigma_init: initial sigma on both axes, in strides; must be > 0.
            freeze_mu, freeze_sigma: keep that parameter at its init.
        """
        super().__init__()
        check_choice(
            ConfigKey("MODEL.AUTOASSIGN.CENTER_PRIOR", "model.center_prior.mode"),
            mode,
            CENTER_PRIOR_CHOICES,
        )
        check_min(
            ConfigKey("MODEL.AUTOASSIGN.SIGMA_INIT", "model.center_prior.sigma_init"),
            sigma_init,
            0,
            strict=True,
        )
        self.mode = mode
        if mode == "none":
            self.mu = None
            self.sigma = None
            return
        rows = num_classes if mode == "per_class" else 1
        self.mu = nn.Parameter(torch.full((rows, 2), float(mu_init)))
        self.sigma = nn.Parameter(torch.full((rows, 2), float(sigma_init)))
        if mode == "fixed" or freeze_mu:
            self.mu.requires_grad_(False)
        if mode == "fixed" or freeze_sigma:
            self.sigma.requires_grad_(False)

    def forward(self, offsets: Tensor, labels: Tensor) -> Tensor:
        """
        Args:
            offsets: (M, 2) float, (x - cx, y - cy) / stride of the location's level.
            labels: (M,) long, class of the object of each pair, in [0, K).
        Returns:
            (M,) prior weights in (0, 1]; all ones in mode "none".
        """
        if self.mu is None:
            return offsets.new_ones(offsets.shape[0])
        rows = labels if self.mu.shape[0] > 1 else torch.zeros_like(labels)
        if torch.jit.is_scripting():  # autograd.Function is not scriptable; same values
            return gaussian_prior(
                offsets, self.mu.index_select(0, rows), self.sigma.index_select(0, rows)
            )
        return self._prior_written_gradient(offsets, rows)

    @torch.jit.unused
    def _prior_written_gradient(self, offsets: Tensor, rows: Tensor) -> Tensor:
        """:func:`gaussian_prior` with the gradient of :class:`_GaussianPrior`."""
        return _GaussianPrior.apply(offsets.detach(), rows, self.mu, self.sigma)

    def zero_grad_term(self, like: Tensor) -> Tensor:
        """``0 * (mu.sum() + sigma.sum())`` (a zero scalar like ``like`` without parameters):
        keeps mu/sigma in the graph when no pair uses them (no in-box location in the batch),
        so every distributed worker produces gradients for the same parameters."""
        if self.mu is None:
            return like.new_zeros(())
        return (self.mu.sum() + self.sigma.sum()) * 0.0
