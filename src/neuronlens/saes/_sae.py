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
    """'saelens' or 'sparsify' (on disk)."""
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
        if self.info.rescale_acts_by_decoder_norm:
            z = z / self.W_dec.norm(dim=-1)
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

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
