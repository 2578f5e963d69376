"""A sparse autoencoder over one layer's residual stream, in SAELens's parameterisation.

encode(x) = act((x - b_dec) @ W_enc + b_enc), act in {ReLU ('standard'), TopK, JumpReLU};
decode(z) = z @ W_dec + b_dec. Weights: W_enc [d_in, d_sae], W_dec [d_sae, d_in].
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import SAEError

ARCHITECTURES = ("standard", "topk", "jumprelu")


@dataclass
class SAEInfo:
    """What is known about one SAE: shape, where it hooks, where it came from, how good it is."""

    d_in: int
    d_sae: int
    architecture: str
    layer: int
    hook_name: str
    k: int | None = None
    apply_b_dec_to_input: bool = True
    rescale_acts_by_decoder_norm: bool = False
    model_name: str | None = None
    model_digest: str | None = None
    source: str = ""
    """Folder, release or 'trained' (with the training settings in `training`)."""
    format: str = "saelens"
    """The family it was read from (saes._families.FAMILIES: 'saelens', 'sparsify', 'gemma_scope',
    'gemma_scope_2', 'llama_scope')."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Quality on held-out activations: fvu, l0, dead_fraction (trained SAEs record them)."""
    training: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SparseAutoencoder(nn.Module):
    def __init__(self, info: SAEInfo, dtype: torch.dtype = torch.float32):
        super().__init__()
        if info.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture {info.architecture!r} not in {ARCHITECTURES}")
        self.info = info
        d_in, d_sae = info.d_in, info.d_sae
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype))
        if info.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(d_sae, dtype=dtype))

    @property
    def layer(self) -> int:
        return self.info.layer

    @property
    def d_sae(self) -> int:
        return self.info.d_sae

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.dtype)
        if self.info.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations [..., d_sae] (dense, mostly zeros)."""
        pre = self.pre_acts(x)
        arch = self.info.architecture
        if arch == "standard":
            return torch.relu(pre)
        if arch == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold)
        if self.info.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        k = int(self.info.k or 0)
        top = pre.topk(k, dim=-1)
        z = torch.zeros_like(pre)
        z.scatter_(-1, top.indices, torch.relu(top.values))
        return z  # with rescale_acts_by_decoder_norm, as sae-lens: in units of unit-norm decoder rows

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = z.to(self.W_dec.dtype)
        if self.info.architecture == "topk" and self.info.rescale_acts_by_decoder_norm:
            z = z * (1 / self.W_dec.norm(dim=-1))  # sae-lens's act_times_W_dec
        return z @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The weights under SAELens's names."""
        return {k: v.detach() for k, v in self.state_dict().items()}

    @property
    def digest(self) -> str:
        """sha256 over the weights (names sorted, raw float32 bytes) and the encode settings, so
        the same SAE has the same digest whatever file format or dtype it was stored in."""
        h = hashlib.sha256()
        h.update(
            repr(
                (self.info.architecture, self.info.k, self.info.apply_b_dec_to_input, self.info.rescale_acts_by_decoder_norm)
            ).encode()
        )
        for name, t in sorted(self.tensors().items()):
            h.update(name.encode())
            h.update(t.to(torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()


def expected_shapes(info: SAEInfo) -> dict[str, tuple[int, ...]]:
    """The shape of each weight under SAELens's names, from the SAE's d_in and d_sae."""
    d_in, d_sae = info.d_in, info.d_sae
    return {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,), "threshold": (d_sae,)}


NON_FINITE_FIX = "Re-download or re-train the SAE: NaN/Inf weights make every feature NaN."


def check_finite(tensors: dict[str, torch.Tensor], where: str, fix: str = NON_FINITE_FIX) -> None:
    """An SAEError naming the first tensor of `tensors` that holds NaN or Inf: such an SAE turns
    every activation into NaN features, and NaN drifts and FVUs pass every `>` test."""
    for name, t in tensors.items():
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise SAEError(f"{where}: tensor {name!r} holds {bad} NaN/Inf value(s) (of {t.numel()}).", fix)


def check_layout(info: SAEInfo, tensors: dict[str, torch.Tensor], where: str) -> None:
    """An SAEError for an SAE NeuronLens cannot encode with: an unknown architecture, a TopK k
    that is not a whole number in 1..d_sae, a JumpReLU threshold missing or negative, or a weight
    whose shape does not match d_in x d_sae."""
    if info.architecture not in ARCHITECTURES:
        raise SAEError(f"SAE at {where} has architecture {info.architecture!r}, which NeuronLens cannot encode with.",
                       f"Use a {', '.join(ARCHITECTURES)} SAE.")
    k = info.k
    if info.architecture == "topk" and not (isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= info.d_sae):
        raise SAEError(f"TopK SAE at {where} has k={k!r}, but k must be a whole number from 1 to its width d_sae={info.d_sae}.",
                       f"Set \"k\" in cfg.json (SAEInfo.k in Python) to the k the SAE was trained with (1..{info.d_sae}).")
    if info.architecture == "jumprelu" and "threshold" not in tensors:
        raise SAEError(f"JumpReLU SAE at {where} has no threshold tensor.", "Re-save it with its threshold.")
    for name, shape in expected_shapes(info).items():
        if name in tensors and tuple(tensors[name].shape) != shape:
            raise SAEError(f"SAE at {where}: {name} has shape {tuple(tensors[name].shape)}, expected {shape} "
                           f"(d_in={info.d_in}, d_sae={info.d_sae}).", "Re-save the SAE; its weights do not fit together.")
    negative = int((tensors["threshold"] < 0).sum()) if info.architecture == "jumprelu" else 0
    if negative:
        raise SAEError(f"JumpReLU SAE at {where} has {negative} negative threshold value(s).",
                       "Re-save it with its trained threshold (JumpReLU thresholds are positive).")


def check_sae(sae: SparseAutoencoder, where: str) -> None:
    """Both checks above on an SAE already built (one made in Python, not read from files)."""
    check_layout(sae.info, sae.tensors(), where)
    check_finite(sae.tensors(), where)


@torch.no_grad()
def reconstruction_metrics(sae: SparseAutoencoder, x: torch.Tensor, batch: int = 4096) -> dict[str, float]:
    """FVU (fraction of variance unexplained), mean L0 and the fraction of latents that never
    fire on `x` [n, d_in]."""
    err = 0.0
    l0 = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    mean = x.mean(0)
    var = float(((x - mean) ** 2).sum())
    for i in range(0, x.shape[0], batch):
        xb = x[i : i + batch]
        z = sae.encode(xb)
        err += float(((sae.decode(z) - xb) ** 2).sum())
        nz = z > 0
        l0 += float(nz.sum())
        fired |= nz.any(0)
    n = max(1, x.shape[0])
    return {
        "fvu": err / max(var, 1e-12),
        "l0": l0 / n,
        "dead_fraction": 1.0 - float(fired.float().mean()),
        "n_eval_tokens": float(x.shape[0]),
    }
