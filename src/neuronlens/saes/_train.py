"""Training TopK SAEs on a model's residual stream (Gao et al. 2024, "Scaling and evaluating
sparse autoencoders"): MSE + AuxK on dead latents, unit-norm decoder rows with the gradient
component parallel to them removed, encoder initialised as the decoder's transpose, b_dec at the
data mean. Inputs are scaled to unit mean squared norm per dimension for training and the scale is
folded back into the weights, so the saved SAE reads raw activations (SAELens convention).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from ._sae import SAEInfo, SparseAutoencoder, reconstruction_metrics


@dataclass
class SAETrainConfig:
    """Settings for training a TopK SAE on one layer."""

    expansion_factor: int = 4
    """d_sae = expansion_factor x d_model."""
    k: int = 32
    """Active latents per token."""
    epochs: int = 12
    """Passes over the training activations."""
    batch_tokens: int = 1024
    """Tokens per optimiser step."""
    lr: float = 1e-3
    """Adam learning rate (decayed linearly to 0 over the last 20% of steps)."""
    auxk_coef: float = 1 / 32
    """Weight of the AuxK loss (Gao et al.: 1/32)."""
    dead_after_tokens: int = 20_000
    """A latent that has not fired for this many training tokens counts as dead for AuxK."""
    holdout_fraction: float = 0.05
    """Share of tokens held out to measure FVU, L0 and dead latents."""
    seed: int = 0


def train_topk_sae(
    acts: torch.Tensor,
    info: SAEInfo,
    cfg: SAETrainConfig,
    *,
    on_step: Callable[[int, int, float], None] | None = None,
) -> SparseAutoencoder:
    """Train on `acts` [n_tokens, d_in] (float32) and return an SAE with held-out metrics set."""
    gen = torch.Generator().manual_seed(cfg.seed)
    n, d_in = acts.shape
    perm = torch.randperm(n, generator=gen)
    n_hold = max(1, int(n * cfg.holdout_fraction))
    hold, train = acts[perm[:n_hold]], acts[perm[n_hold:]]
    scale = float(train.pow(2).sum(-1).mean().sqrt() / math.sqrt(d_in))
    x_all = train / scale

    d_sae = cfg.expansion_factor * d_in
    W_dec = torch.randn(d_sae, d_in, generator=gen)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    W_dec = W_dec.requires_grad_(True)
    W_enc = W_dec.detach().T.clone().requires_grad_(True)
    b_enc = torch.zeros(d_sae, requires_grad=True)
    b_dec = x_all.mean(0).clone().requires_grad_(True)
    params = [W_enc, b_enc, W_dec, b_dec]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), eps=6.25e-10)

    steps_per_epoch = max(1, math.ceil(x_all.shape[0] / cfg.batch_tokens))
    total = steps_per_epoch * cfg.epochs
    decay_from = int(0.8 * total)
    since_fired = torch.zeros(d_sae, dtype=torch.long)
    k_aux = d_in // 2
    step = 0
    for _epoch in range(cfg.epochs):
        order = torch.randperm(x_all.shape[0], generator=gen)
        for s in range(steps_per_epoch):
            x = x_all[order[s * cfg.batch_tokens : (s + 1) * cfg.batch_tokens]]
            loss = _batch_loss(x, params, cfg, since_fired, k_aux)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                assert W_dec.grad is not None
                W_dec.grad -= (W_dec.grad * W_dec).sum(-1, keepdim=True) * W_dec
                lr = cfg.lr * (1.0 if step < decay_from else max(0.0, (total - step) / max(1, total - decay_from)))
                for g in opt.param_groups:
                    g["lr"] = lr
            opt.step()
            with torch.no_grad():
                W_dec /= W_dec.norm(dim=-1, keepdim=True)
            step += 1
            if on_step is not None:
                on_step(step, total, float(loss.detach()))

    return _finished_sae(info, cfg, params, scale, hold, n_train=int(train.shape[0]))


def _batch_loss(
    x: torch.Tensor, params: list[torch.Tensor], cfg: SAETrainConfig, since_fired: torch.Tensor, k_aux: int
) -> torch.Tensor:
    """The normalised reconstruction loss of batch `x`, plus the AuxK loss while latents are dead;
    counts tokens since each latent last fired in `since_fired` (in place)."""
    W_enc, b_enc, W_dec, b_dec = params
    d_sae = W_dec.shape[0]
    pre = (x - b_dec) @ W_enc + b_enc
    top = pre.topk(cfg.k, dim=-1)
    vals = torch.relu(top.values)
    recon = _sparse_decode(vals, top.indices, W_dec) + b_dec
    err = x - recon
    total_var = (x - x.mean(0)).pow(2).sum().clamp_min(1e-8)
    loss = err.pow(2).sum() / total_var
    with torch.no_grad():
        fired = torch.zeros(d_sae, dtype=torch.bool)
        fired[top.indices[vals > 0].unique()] = True
        since_fired += x.shape[0]
        since_fired[fired] = 0
        dead = since_fired > cfg.dead_after_tokens
    n_dead = int(dead.sum())
    if n_dead > 0:
        ka = min(k_aux, n_dead)
        aux_pre = torch.where(dead[None], pre, torch.full_like(pre, -torch.inf))
        aux = aux_pre.topk(ka, dim=-1)
        e_hat = _sparse_decode(torch.relu(aux.values), aux.indices, W_dec)
        aux_loss = (e_hat - err.detach()).pow(2).sum() / total_var
        loss = loss + cfg.auxk_coef * min(n_dead / k_aux, 1.0) * aux_loss
    return loss


def _finished_sae(
    info: SAEInfo, cfg: SAETrainConfig, params: list[torch.Tensor], scale: float, hold: torch.Tensor, *, n_train: int
) -> SparseAutoencoder:
    """The trained weights as an SAE on raw activations, with held-out metrics on `hold`."""
    W_enc, b_enc, W_dec, b_dec = params
    d_sae = W_dec.shape[0]
    sae = SparseAutoencoder(SAEInfo(**{**asdict(info), "d_sae": d_sae, "architecture": "topk", "k": cfg.k}))
    with torch.no_grad():
        # Fold the input scale: codes become raw-activation units along unit decoder directions.
        sae.W_enc.copy_(W_enc)
        sae.b_enc.copy_(b_enc * scale)
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(b_dec * scale)
    sae.requires_grad_(False)
    sae.info.metrics = reconstruction_metrics(sae, hold)
    sae.info.training = {**asdict(cfg), "n_train_tokens": n_train, "input_scale": scale}
    return sae


def _sparse_decode(vals: torch.Tensor, idx: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """sum_j vals[:, j] * W_dec[idx[:, j]], without materialising dense [n, d_sae] codes or the
    gathered [n, k, d_in] rows (embedding_bag does the weighted gather-sum in one kernel)."""
    return torch.nn.functional.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum")
