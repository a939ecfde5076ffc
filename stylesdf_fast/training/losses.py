"""Every StyleSDF training loss (docs/official.md section 3), with the official formulas.

Shape legend: B batch, H/W height/width, S samples per ray, L W+ latents, D latent size.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import autograd

PATH_LENGTH_DECAY = 0.01   # the running path-length mean moves 1% toward each new batch mean

__all__ = ["PATH_LENGTH_DECAY", "d_logistic_loss", "d_r1_loss", "g_nonsaturating_loss", "viewpoints_loss", "eikonal_loss",
           "min_surface_loss", "g_path_regularize", "sphere_init_loss"]


def d_logistic_loss(real_pred: torch.Tensor, fake_pred: torch.Tensor) -> torch.Tensor:
    """Logistic D loss: mean softplus(-D(real)) + mean softplus(D(fake)); preds [B, 1]."""
    return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def d_r1_loss(real_pred: torch.Tensor, real_img: torch.Tensor) -> torch.Tensor:
    """R1: |d sum D(real) / d real|^2 summed per image, averaged over the batch. real_img
    [B, 3, H, W] must require grad; the result is differentiable (create_graph)."""
    (grad_real,) = autograd.grad(real_pred.sum(), real_img, create_graph=True)
    return grad_real.pow(2).reshape(grad_real.shape[0], -1).sum(1).mean()


def g_nonsaturating_loss(fake_pred: torch.Tensor) -> torch.Tensor:
    """Non-saturating G loss: mean softplus(-D(fake))."""
    return F.softplus(-fake_pred).mean()


def viewpoints_loss(viewpoint_pred: torch.Tensor, viewpoint_target: torch.Tensor) -> torch.Tensor:
    """Pose alignment: smooth-L1 (beta 1) between D's predicted and the sampled (azimuth,
    elevation), [B, 2] each, averaged."""
    return F.smooth_l1_loss(viewpoint_pred, viewpoint_target)


def eikonal_loss(eikonal_term: torch.Tensor) -> torch.Tensor:
    """Mean over samples of (|d sdf / d x| - 1)^2; eikonal_term [B, H, W, S, 3] (world-space gradient)."""
    return (torch.linalg.vector_norm(eikonal_term, dim=-1) - 1).pow(2).mean()


def min_surface_loss(sdf: torch.Tensor, beta: float = 100.0) -> torch.Tensor:
    """Minimal surface: mean over samples of exp(-beta |sdf|); sdf [B, H, W, S, 1]."""
    return torch.exp(-beta * sdf.abs()).mean()


def sphere_init_loss(sdf: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sphere initialisation: L1 between the predicted SDF and the sphere's, [B, H, W, S] each."""
    return F.l1_loss(sdf, target)


def g_path_regularize(fake_img: torch.Tensor, latents: torch.Tensor, mean_path_length: torch.Tensor,
                      decay: float = PATH_LENGTH_DECAY) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """StyleGAN2 path-length penalty.

    fake_img [B, 3, H, W], latents [B, L, D] (W+, in the graph) -> (penalty = mean (|J^T y| - a)^2,
    new running mean a (detached), per-sample path lengths [B]) with y ~ N(0, 1) / sqrt(H W) and
    a <- a + decay (mean length - a).
    """
    noise = torch.randn_like(fake_img) / math.sqrt(fake_img.shape[2] * fake_img.shape[3])
    (grad,) = autograd.grad((fake_img * noise).sum(), latents, create_graph=True)
    path_lengths = torch.sqrt(grad.pow(2).sum(2).mean(1))
    path_mean = mean_path_length + decay * (path_lengths.mean() - mean_path_length)
    path_penalty = (path_lengths - path_mean).pow(2).mean()
    return path_penalty, path_mean.detach(), path_lengths


