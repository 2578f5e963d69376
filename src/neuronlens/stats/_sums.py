"""Mergeable sufficient statistics of an audit.

Everything the report says is computed from these sums (counts, sums, sums of squares, firing
counts, in float64), so batches, processes and machines combine exactly by addition: an audit
sharded over ranks and all-reduced gives the same numbers as one process.

Two granularities are kept: token-level (means, firing rates, effect sizes) and prompt-level
(the mean over each prompt's tokens, then sums over prompts), because tokens of one response are
not independent, so significance tests use prompts as the unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import reduce
from typing import TypeVar

import torch

F64 = torch.float64
S = TypeVar("S", bound="_FieldSums")


def per_prompt_means(values: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unique prompt keys, [n_unique, ...] mean of `values` over each prompt's tokens)."""
    keys, inv = torch.unique(prompt, return_inverse=True)
    sums = torch.zeros((keys.numel(), *values.shape[1:]), dtype=F64).index_add_(0, inv, values.to(F64))
    counts = torch.zeros(keys.numel(), dtype=F64).index_add_(0, inv, torch.ones_like(inv, dtype=F64))
    return keys, sums / counts.view(-1, *([1] * (values.dim() - 1)))


class _FieldSums:
    """Sums held as dataclass fields of float64 tensors: two of them merge field by field (the
    exact combination of batches, processes and machines), and they flatten by field name."""

    def merge(self: S, other: S) -> S:
        return type(self)(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class LatentSums(_FieldSums):
    """Sums over the latents of one SAE for one (layer, probe set)."""

    n_base: torch.Tensor
    n_ft: torch.Tensor
    """Token counts (0-d tensors)."""
    p_base: torch.Tensor
    p_ft: torch.Tensor
    p_diff: torch.Tensor
    """Prompt counts (p_diff: prompts with a paired difference)."""
    base_sum: torch.Tensor
    base_sumsq: torch.Tensor
    base_fire: torch.Tensor
    ft_sum: torch.Tensor
    ft_sumsq: torch.Tensor
    ft_fire: torch.Tensor
    diff_sumsq: torch.Tensor
    """Token-level sum of (ft - base)^2 (paired reads only)."""
    pb_sum: torch.Tensor
    pb_sumsq: torch.Tensor
    pf_sum: torch.Tensor
    pf_sumsq: torch.Tensor
    pd_sum: torch.Tensor
    pd_sumsq: torch.Tensor
    """Prompt-level sums of per-prompt means of base, ft and (paired) ft - base."""

    @classmethod
    def zeros(cls, d: int) -> LatentSums:
        kw = {}
        for f in fields(cls):
            kw[f.name] = torch.zeros((), dtype=F64) if f.name in ("n_base", "n_ft", "p_base", "p_ft", "p_diff") else torch.zeros(d, dtype=F64)
        return cls(**kw)

    def add_paired(self, base: torch.Tensor, ft: torch.Tensor, prompt: torch.Tensor) -> None:
        """Add codes [n, d] of both models read on the same n tokens; `prompt` [n] groups tokens."""
        self.add_side("base", base, prompt)
        self.add_side("ft", ft, prompt)
        diff = ft.to(F64) - base.to(F64)
        self.diff_sumsq += diff.pow(2).sum(0)
        self.add_prompt_diffs(per_prompt_means(diff, prompt)[1])

    def add_prompt_diffs(self, diffs: torch.Tensor) -> None:
        """Add per-prompt mean differences [n_prompts, d] (ft - base on the same prompt)."""
        d = diffs.to(F64)
        self.p_diff += d.shape[0]
        self.pd_sum += d.sum(0)
        self.pd_sumsq += d.pow(2).sum(0)

    def add_side(self, side: str, codes: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add one model's codes [n, d] of n tokens grouped into prompts by `prompt` [n]; returns
        the (prompt keys, per-prompt means) it added, for callers that pair prompts themselves."""
        c = codes.to(F64)
        s = "base" if side == "base" else "ft"
        getattr(self, f"n_{s}").add_(c.shape[0])
        getattr(self, f"{s}_sum").add_(c.sum(0))
        getattr(self, f"{s}_sumsq").add_(c.pow(2).sum(0))
        getattr(self, f"{s}_fire").add_((c > 0).sum(0).to(F64))
        keys, pm = per_prompt_means(c, prompt)
        if c.shape[0]:
            getattr(self, f"p_{s}").add_(pm.shape[0])
            getattr(self, f"p{s[0]}_sum").add_(pm.sum(0))
            getattr(self, f"p{s[0]}_sumsq").add_(pm.pow(2).sum(0))
        return keys, pm


@dataclass
class ResidualSums(_FieldSums):
    """Paired sums over the residual stream of one (layer, probe set)."""

    n: torch.Tensor
    rel_change_sum: torch.Tensor
    """Sum over tokens of ||h_ft - h_base|| / ||h_base||."""
    cos_sum: torch.Tensor
    """Sum over tokens of cos(h_ft, h_base)."""
    diff_sqnorm_sum: torch.Tensor
    base_sqnorm_sum: torch.Tensor

    @classmethod
    def zeros(cls) -> ResidualSums:
        return cls(*(torch.zeros((), dtype=F64) for _ in fields(cls)))

    def add(self, base: torch.Tensor, ft: torch.Tensor) -> None:
        b, f = base.to(F64), ft.to(F64)
        d = f - b
        bn = b.norm(dim=-1).clamp_min(1e-12)
        self.n += b.shape[0]
        self.rel_change_sum += (d.norm(dim=-1) / bn).sum()
        self.cos_sum += ((b * f).sum(-1) / (bn * f.norm(dim=-1).clamp_min(1e-12))).sum()
        self.diff_sqnorm_sum += d.pow(2).sum()
        self.base_sqnorm_sum += b.pow(2).sum()


@dataclass
class ReconstructionSums(_FieldSums):
    """How well the SAE reconstructs the base model's residuals at one (layer, probe set): the
    audit's own check of SAE quality on the text it reads, for SAEs that bring no recorded
    quality (and for probes unlike their training data)."""

    n: torch.Tensor
    err_sqnorm_sum: torch.Tensor
    """Sum over tokens of ||h - SAE(h)||^2."""
    sqnorm_sum: torch.Tensor
    """Sum over tokens of ||h||^2."""
    sum: torch.Tensor
    """Sum over tokens of h [d_model] (with n and sqnorm_sum it gives the variance about the mean)."""

    @classmethod
    def zeros(cls, d: int) -> ReconstructionSums:
        return cls(*(torch.zeros((), dtype=F64) for _ in range(3)), torch.zeros(d, dtype=F64))

    def add(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        x64 = x.to(F64)
        self.n += x64.shape[0]
        self.err_sqnorm_sum += (x64 - x_hat.to(F64)).pow(2).sum()
        self.sqnorm_sum += x64.pow(2).sum()
        self.sum += x64.sum(0)

    @property
    def fvu(self) -> float:
        """Fraction of variance unexplained, sum ||h - SAE(h)||^2 / sum ||h - mean h||^2, as
        `saes.reconstruction_metrics` measures it on held-out training data; NaN without tokens."""
        n = float(self.n)
        if n == 0:
            return float("nan")
        var = float(self.sqnorm_sum) - float(self.sum.pow(2).sum()) / n
        return float(self.err_sqnorm_sum) / max(var, 1e-12)


@dataclass
class AuditSums:
    """All sums of an audit, keyed by (read, layer, probe set). `read` is 'same' (both models on
    the base model's responses) or 'own' (each model on its own responses). `concepts` holds the
    same sums for the projections of the codes onto the risk concepts' feature directions (one
    "latent" per concept): projections are linear in the codes, so they merge exactly too."""

    latents: dict[tuple[str, int, str], LatentSums]
    residual: dict[tuple[int, str], ResidualSums]
    concepts: dict[tuple[str, int, str], LatentSums] = field(default_factory=dict)
    recon: dict[tuple[int, str], ReconstructionSums] = field(default_factory=dict)
    """SAE reconstruction of the base residuals (same read), keyed by (layer, probe set); empty
    in statistics saved before it was kept."""

    @classmethod
    def empty(cls) -> AuditSums:
        return cls({}, {}, {}, {})

    def latent(self, read: str, layer: int, probe: str, d: int) -> LatentSums:
        return self.latents.setdefault((read, layer, probe), LatentSums.zeros(d))

    def concept(self, read: str, layer: int, probe: str, n_concepts: int) -> LatentSums:
        return self.concepts.setdefault((read, layer, probe), LatentSums.zeros(n_concepts))

    def resid(self, layer: int, probe: str) -> ResidualSums:
        return self.residual.setdefault((layer, probe), ResidualSums.zeros())

    def reconstruction(self, layer: int, probe: str, d: int) -> ReconstructionSums:
        return self.recon.setdefault((layer, probe), ReconstructionSums.zeros(d))

    def merge(self, other: AuditSums) -> AuditSums:
        return AuditSums(
            _merge_dicts(self.latents, other.latents),
            _merge_dicts(self.residual, other.residual),
            _merge_dicts(self.concepts, other.concepts),
            _merge_dicts(self.recon, other.recon),
        )

    def latent_total(self, read: str, layer: int, probes: list[str] | None = None) -> LatentSums:
        return _total(self.latents, read, layer, probes)

    def concept_total(self, read: str, layer: int, probes: list[str] | None = None) -> LatentSums:
        return _total(self.concepts, read, layer, probes)

    def recon_total(self, layer: int) -> ReconstructionSums | None:
        """The reconstruction sums of `layer` over all probe sets (None when not kept)."""
        parts = [v for (la, _), v in self.recon.items() if la == layer]
        return _merged(parts) if parts else None

    def resid_total(self, layer: int, probes: list[str] | None = None) -> ResidualSums:
        total = ResidualSums.zeros()
        for (la, p), v in self.residual.items():
            if la == layer and (probes is None or p in probes):
                total = total.merge(v)
        return total

    def non_finite(self) -> list[tuple[str, int, str, str]]:
        """(kind, layer, probe set, field) of every sum holding NaN or infinity; kind is 'latent'
        or 'concept' (SAE codes and their projections, read-prefixed: 'latent/same'), 'resid' or
        'recon' (residuals). One isfinite pass over each tensor: a few MB for a default audit."""
        out: list[tuple[str, int, str, str]] = []
        for kind, table in (("latent", self.latents), ("concept", self.concepts)):
            for (read, layer, probe), s in table.items():
                out += [(f"{kind}/{read}", layer, probe, n) for n, t in s.tensors().items() if not bool(torch.isfinite(t).all())]
        for kind, table2 in (("resid", self.residual), ("recon", self.recon)):
            for (layer, probe), r in table2.items():
                out += [(kind, layer, probe, n) for n, t in r.tensors().items() if not bool(torch.isfinite(t).all())]
        return sorted(out)

    # -- flat tensor form (safetensors sidecar, all-reduce) -------------------------------------
    def to_flat(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for (read, layer, probe), s in sorted(self.latents.items()):
            for name, t in s.tensors().items():
                out[f"latent|{read}|{layer}|{probe}|{name}"] = t.contiguous()
        for (layer, probe), r in sorted(self.residual.items()):
            for name, t in r.tensors().items():
                out[f"resid|{layer}|{probe}|{name}"] = t.contiguous()
        for (read, layer, probe), s in sorted(self.concepts.items()):
            for name, t in s.tensors().items():
                out[f"concept|{read}|{layer}|{probe}|{name}"] = t.contiguous()
        for (layer, probe), r in sorted(self.recon.items()):
            for name, t in r.tensors().items():
                out[f"recon|{layer}|{probe}|{name}"] = t.contiguous()
        return out

    @classmethod
    def from_flat(cls, flat: dict[str, torch.Tensor]) -> AuditSums:
        lat: dict[tuple[str, int, str], dict[str, torch.Tensor]] = {}
        con: dict[tuple[str, int, str], dict[str, torch.Tensor]] = {}
        res: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
        rec: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
        for key, t in flat.items():
            parts = key.split("|")
            if parts[0] in ("latent", "concept"):
                target = lat if parts[0] == "latent" else con
                target.setdefault((parts[1], int(parts[2]), parts[3]), {})[parts[4]] = t.to(F64)
            elif parts[0] in ("resid", "recon"):
                target2 = res if parts[0] == "resid" else rec
                target2.setdefault((int(parts[1]), parts[2]), {})[parts[3]] = t.to(F64)
        return cls(
            {k: LatentSums(**v) for k, v in lat.items()},
            {k: ResidualSums(**v) for k, v in res.items()},
            {k: LatentSums(**v) for k, v in con.items()},
            {k: ReconstructionSums(**v) for k, v in rec.items()},
        )


def _merge_dicts(a: dict, b: dict) -> dict:  # type: ignore[type-arg]
    out = dict(a)
    for k, v in b.items():
        out[k] = out[k].merge(v) if k in out else v
    return out


def _total(sums: dict[tuple[str, int, str], LatentSums], read: str, layer: int, probes: list[str] | None) -> LatentSums:
    parts = [v for (r, la, p), v in sums.items() if r == read and la == layer and (probes is None or p in probes)]
    if not parts:
        raise KeyError(f"no statistics for read={read!r} layer={layer}")
    return _merged(parts)


def _merged(parts: list[S]) -> S:
    """The merge of one or more sums of one kind."""
    return reduce(lambda a, b: a.merge(b), parts)
