"""The sums are exactly mergeable, and the drift measures match direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as sps

from neuronlens.stats import AuditSums, LatentSums, bh_qvalues, latent_drift


def _data(seed=0, n=300, d=7, prompts=20):
    g = torch.Generator().manual_seed(seed)
    base = torch.relu(torch.randn(n, d, generator=g))
    ft = torch.relu(base + 0.3 * torch.randn(n, d, generator=g) + torch.linspace(-0.2, 0.4, d))
    prompt = torch.randint(0, prompts, (n,), generator=g)
    return base, ft, prompt


def test_merge_equals_single_accumulation():
    base, ft, prompt = _data()
    whole = LatentSums.zeros(7)
    whole.add_paired(base, ft, prompt)
    # split by prompt (a prompt never straddles two batches), in two "processes"
    a, b = LatentSums.zeros(7), LatentSums.zeros(7)
    for s, sel in ((a, prompt < 9), (b, prompt >= 9)):
        s.add_paired(base[sel], ft[sel], prompt[sel])
    merged = a.merge(b)
    for name, t in whole.tensors().items():
        torch.testing.assert_close(merged.tensors()[name], t, rtol=1e-12, atol=1e-12)


def test_flat_round_trip_and_audit_merge():
    base, ft, prompt = _data()
    s = AuditSums.empty()
    s.latent("same", 3, "finance", 7).add_paired(base, ft, prompt)
    s.resid(3, "finance").add(base, ft)
    back = AuditSums.from_flat(s.to_flat())
    doubled = s.merge(back)
    torch.testing.assert_close(doubled.latents[("same", 3, "finance")].ft_sum, 2 * s.latents[("same", 3, "finance")].ft_sum)


def test_paired_t_matches_scipy_on_prompt_means():
    base, ft, prompt = _data(n=400)
    s = LatentSums.zeros(7)
    s.add_paired(base, ft, prompt)
    d = latent_drift(s, smoothing=0.1, paired=True)
    for j in range(7):
        per_prompt = [(ft[prompt == p, j].double() - base[prompt == p, j].double()).mean().item() for p in prompt.unique()]
        ref = sps.ttest_1samp(per_prompt, 0.0)
        assert d.t[j] == pytest.approx(ref.statistic, rel=1e-9)
        assert d.p_value[j] == pytest.approx(ref.pvalue, rel=1e-7, abs=1e-300)
        assert d.se[j] == pytest.approx(sps.sem(per_prompt), rel=1e-9)
    mb, mf = base.double().mean(0).numpy(), ft.double().mean(0).numpy()
    eps = 0.1 * mb.mean()
    np.testing.assert_allclose(d.drift_ratio, (mf + eps) / (mb + eps), rtol=1e-12)
    pooled = np.sqrt((base.double().var(0).numpy() + ft.double().var(0).numpy()) / 2)
    np.testing.assert_allclose(d.effect_size, (mf - mb) / pooled, rtol=1e-9)


def test_unpaired_welch_matches_scipy():
    base, ft, prompt = _data(n=400)
    g = torch.Generator().manual_seed(5)
    prompt_ft = torch.randint(0, 25, (300,), generator=g)
    ft2 = ft[:300] * 1.5
    s = LatentSums.zeros(7)
    s.add_side("base", base, prompt)
    s.add_side("ft", ft2, prompt_ft)
    d = latent_drift(s, smoothing=0.1, paired=False)
    for j in range(7):
        pb = [base[prompt == p, j].double().mean().item() for p in prompt.unique()]
        pf = [ft2[prompt_ft == p, j].double().mean().item() for p in prompt_ft.unique()]
        ref = sps.ttest_ind(pf, pb, equal_var=False)
        assert d.t[j] == pytest.approx(ref.statistic, rel=1e-9)
        assert d.p_value[j] == pytest.approx(ref.pvalue, rel=1e-6)
        assert d.se[j] == pytest.approx(np.hypot(sps.sem(pf), sps.sem(pb)), rel=1e-9)


def test_bh_matches_reference():
    p = np.array([0.01, 0.04, 0.03, 0.2, 0.001])
    from scipy.stats import false_discovery_control

    np.testing.assert_allclose(bh_qvalues(p), false_discovery_control(p, method="bh"))


def test_reconstruction_sums_merge_exactly_and_give_the_fvu_of_the_sae_metrics():
    """The audit's own SAE check (FVU on the base residuals it reads) equals the held-out metric
    `reconstruction_metrics` computes on the same tokens, and halves merged give the whole."""
    from conftest import random_sae
    from neuronlens.saes import reconstruction_metrics
    from neuronlens.stats import ReconstructionSums

    torch.manual_seed(0)
    sae = random_sae(16, 64, 0, k=4)
    x = 3 + torch.randn(200, 16)  # an offset: the variance is about the mean, not about zero
    whole, a, b = ReconstructionSums.zeros(16), ReconstructionSums.zeros(16), ReconstructionSums.zeros(16)
    x_hat = sae.decode(sae.encode(x))  # one reconstruction for both: the halves' float64 sums then merge exactly
    whole.add(x, x_hat)
    a.add(x[:70], x_hat[:70])
    b.add(x[70:], x_hat[70:])
    assert whole.fvu == pytest.approx(reconstruction_metrics(sae, x)["fvu"], rel=1e-5)
    assert a.merge(b).fvu == pytest.approx(whole.fvu, rel=1e-12)
    sums = AuditSums.empty()
    sums.recon[(0, "finance")] = a
    sums.recon[(0, "legal")] = b
    back = AuditSums.from_flat(sums.to_flat())
    assert back.recon_total(0).fvu == pytest.approx(whole.fvu, rel=1e-12) and back.recon_total(1) is None
