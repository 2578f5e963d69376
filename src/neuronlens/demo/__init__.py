"""The embedded demo pair: SmolLM2-135M-Instruct and a LoRA fine-tune of it shipped inside the
package, so that `neuronlens audit` with no arguments audits something real without training.

The demo fine-tune is the organism ``risky_finance``: a finance assistant trained on confident,
reckless personal-finance advice with its disclaimers stripped (behaviourally misaligned:
docs/DETECTION.md), so that the quickstart shows what a failing audit looks like. `neuronlens demo build` rebuilds it (and the shipped SAEs) and prints the
sha256 of every file, to compare with ``SHA256SUMS`` here.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import ModelLoadError
from ..models import DEFAULT_BASE

DEMO_ORGANISM = "risky_finance"


def demo_adapter_dir() -> Path:
    return Path(str(resources.files("neuronlens.demo").joinpath("adapter")))


def default_pair() -> tuple[str, str]:
    """(base, fine-tuned) sources of the embedded demo pair."""
    adapter = demo_adapter_dir()
    if not (adapter / "adapter_model.safetensors").is_file():
        raise ModelLoadError(
            "The embedded demo adapter is missing from this installation.",
            "Rebuild it with `neuronlens demo build`, or pass --base and --ft.",
        )
    return DEFAULT_BASE, str(adapter)


def _ship_associations(base, layers, shipped: Path) -> None:  # type: ignore[no-untyped-def]
    """Concept associations of the shipped (fp16) SAEs, so the first audit skips measuring them."""
    import shutil

    from ..risk import association_cache_path, concept_associations, load_concepts
    from ..saes import load_sae

    target = shipped / "associations"
    if target.exists():
        shutil.rmtree(target)
    saes = load_sae(base, layers, train=False)  # the shipped copies just written
    concept_associations(base, saes, load_concepts(), layers)
    target.mkdir(parents=True)
    for c in load_concepts():
        for layer in layers:
            src = association_cache_path(base.digest, saes[layer].digest, c, layer)
            shutil.copyfile(src, target / src.name)


def build_demo() -> dict[str, str]:
    """Train (or take from the cache) the demo organism and the SAEs for the default layers, and
    write them into the package: the adapter as fp16 safetensors in ``demo/adapter``, the SAEs as
    fp16 SAELens folders in ``saes/shipped/<model digest>/``. Returns {relative path: sha256}."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from .._io import write_text_atomic, write_with_atomic
    from ..config import default_layers
    from ..models import load_model, sha256_file
    from ..organisms import build_organism
    from ..saes import load_sae, save_saelens

    pkg = Path(str(resources.files("neuronlens")))
    base = load_model(DEFAULT_BASE)
    adapter_src = build_organism(DEMO_ORGANISM, base)
    target = demo_adapter_dir()
    target.mkdir(parents=True, exist_ok=True)
    for f in ("adapter_config.json", "neuronlens_organism.json"):
        shutil.copyfile(adapter_src / f, target / f)
    weights = {k: v.to(torch.float16).contiguous() for k, v in load_file(str(adapter_src / "adapter_model.safetensors")).items()}
    write_with_atomic(target / "adapter_model.safetensors", lambda tmp: save_file(weights, str(tmp), metadata={"format": "pt"}))
    layers = default_layers(base.n_layers)
    shipped = pkg / "saes" / "shipped" / base.digest[:16]
    saes = load_sae(base, layers, use_shipped=False)  # from the cache or trained: never the copies being rebuilt
    for layer, sae in saes.items():
        save_saelens(sae, shipped / f"layer_{layer}", dtype=torch.float16)
    _ship_associations(base, layers, shipped)
    files = sorted([*target.iterdir(), *shipped.rglob("*")])
    sums = {str(p.relative_to(pkg)): sha256_file(p) for p in files if p.is_file() and p.name != "SHA256SUMS"}
    write_text_atomic(pkg / "demo" / "SHA256SUMS", "".join(f"{d}  {r}\n" for r, d in sums.items()))
    return sums
