"""Drift measures computed from the sums (definitions: docs/METHOD.md).

Per latent: base and fine-tuned mean activation, the smoothed drift ratio
``(ft_mean + eps) / (base_mean + eps)`` with ``eps = smoothing * mean_j(base_mean_j)``, the
standardised difference (Cohen's d with the pooled token-level standard deviation) and a
prompt-level t-test (paired by prompt; Welch on per-prompt means when no prompts pair up), with
Benjamini-Hochberg q-values. Per layer: the mean relative change of the residual stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as sps

from ._sums import LatentSums, ResidualSums


@dataclass
class LatentDriftArrays:
    """Per-latent drift measures of one layer (numpy arrays of length d_sae)."""

    base_mean: np.ndarray
    ft_mean: np.ndarray
    drift_ratio: np.ndarray
    effect_size: np.ndarray
    t: np.ndarray
    p_value: np.ndarray
    se: np.ndarray
    """Standard error of the prompt-level mean difference the test is on (t = that mean / se)."""
    base_fire_rate: np.ndarray
    ft_fire_rate: np.ndarray
    epsilon: float


def _var(sumsq: torch.Tensor, s: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    n = n.clamp_min(2)
    return ((sumsq - s * s / n) / (n - 1)).clamp_min(0)


def latent_means(s: LatentSums) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean code of every latent over the base model's and the fine-tuned model's measured tokens."""
    return s.base_sum / s.n_base.clamp_min(1), s.ft_sum / s.n_ft.clamp_min(1)


def latent_drift(s: LatentSums, smoothing: float, *, paired: bool | None = None) -> LatentDriftArrays:
    """Drift of every latent. The test is paired (one-sample t on per-prompt differences)
    whenever paired prompt differences were recorded, else Welch on per-prompt means."""
    if paired is None:
        paired = float(s.p_diff) >= 2
    nb, nf = s.n_base.clamp_min(1), s.n_ft.clamp_min(1)
    mb, mf = latent_means(s)
    eps = float(smoothing * mb.mean().clamp_min(1e-12))
    ratio = (mf + eps) / (mb + eps)
    pooled = ((_var(s.base_sumsq, s.base_sum, s.n_base) + _var(s.ft_sumsq, s.ft_sum, s.n_ft)) / 2).sqrt()
    effect = torch.where(pooled > 0, (mf - mb) / pooled.clamp_min(1e-12), torch.zeros_like(mf))
    if paired:
        p = s.p_diff.clamp_min(1)
        mean_d = s.pd_sum / p
        var_d = _var(s.pd_sumsq, s.pd_sum, s.p_diff)
        se = (var_d / p).sqrt()
        df = np.full(mean_d.shape, max(1.0, float(s.p_diff) - 1))
    else:
        pb, pf = s.p_base.clamp_min(1), s.p_ft.clamp_min(1)
        mean_d = s.pf_sum / pf - s.pb_sum / pb
        vb, vf = _var(s.pb_sumsq, s.pb_sum, s.p_base) / pb, _var(s.pf_sumsq, s.pf_sum, s.p_ft) / pf
        se = (vb + vf).sqrt()
        num = (vb + vf) ** 2
        den = vb**2 / (pb - 1).clamp_min(1) + vf**2 / (pf - 1).clamp_min(1)
        df = torch.where(den > 0, num / den.clamp_min(1e-300), torch.ones_like(num)).numpy()
    mean_d_np, se_np = mean_d.numpy(), se.numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se_np > 0, mean_d_np / np.where(se_np > 0, se_np, 1.0), np.where(mean_d_np != 0, np.inf * np.sign(mean_d_np), 0.0))
    pval = np.where(np.isfinite(t), 2 * sps.t.sf(np.abs(t), df), np.where(t == 0, 1.0, 0.0))
    pval = np.where(mean_d_np == 0, 1.0, pval)
    return LatentDriftArrays(
        base_mean=mb.numpy(),
        ft_mean=mf.numpy(),
        drift_ratio=ratio.numpy(),
        effect_size=effect.numpy(),
        t=t,
        p_value=pval,
        se=se_np,
        base_fire_rate=(s.base_fire / nb).numpy(),
        ft_fire_rate=(s.ft_fire / nf).numpy(),
        epsilon=eps,
    )


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), same shape as `p`."""
    flat = np.asarray(p, dtype=float).ravel()
    n = flat.size
    if n == 0:
        return flat.reshape(np.shape(p))
    order = np.argsort(flat)
    ranked = flat[order] * n / np.arange(1, n + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1.0)
    out = np.empty(n)
    out[order] = q
    return out.reshape(np.shape(p))


def residual_drift(r: ResidualSums) -> dict[str, float]:
    n = max(1.0, float(r.n))
    return {
        "drift": float(r.rel_change_sum) / n,
        "cosine": float(r.cos_sum) / n if float(r.n) else 1.0,
        "relative_rms": float((r.diff_sqnorm_sum / r.base_sqnorm_sum.clamp_min(1e-300)).sqrt()),
        "n_tokens": int(r.n),
    }
