"""Refresh NeuronLens's snapshot of sae-lens's release registry (src/neuronlens/saes/data/pretrained_saes.json).

Run with a Python that has sae-lens installed (it is not a NeuronLens dependency):

    /work/saelens-venv/bin/python scripts/refresh_sae_registry.py

The snapshot keeps what resolving a release name needs, and nothing that needs the network:
release -> repo_id, model, converter (sae-lens's conversion_func), config_overrides, and per SAE
id its path in the repo, the hook it reads, its Neuronpedia id and its norm_scaling_factor. Only
residual-stream SAEs are listed (per other site, a count); releases of converters NeuronLens
refuses keep no SAE list. The hook is what sae-lens's converter would set, derived offline: SAELens-format ids are hook names;
Gemma Scope's comes from sae-lens's own config getter (it reads only the repo and folder names);
Gemma Scope 2's and Llama Scope's follow the getters' rules on the folder name (the getters
themselves download config files). A hook that cannot be told offline is null and is read from
the SAE's files when it loads.
"""

from __future__ import annotations

import json
import re
import sys
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).resolve().parents[1] / "src" / "neuronlens" / "saes" / "data" / "pretrained_saes.json"
_HOOK_ID = re.compile(r"^blocks\.\d+\.(?:attn\.)?hook_[a-z_]+?(?=$|_\d+$)")
_GEMMA3_SITES = (("transcoder", "hook_mlp_in"), ("clt", "hook_mlp_in"), ("resid_post", "hook_resid_post"),
                 ("attn_out", "attn.hook_z"), ("mlp_out", "hook_mlp_out"))
_RESIDUAL = re.compile(r"^blocks\.\d+\.hook_resid_(?:pre|post)$")
_LLAMA_SITES = {"R": "hook_resid_post", "A": "hook_attn_out", "M": "hook_mlp_out", "TC": "ln2.hook_normalized"}


def hook_sae_lens(release: dict[str, Any], sae: dict[str, Any]) -> str | None:
    m = _HOOK_ID.match(str(sae["id"]))
    return m.group(0) if m else None


def hook_gemma_2(release: dict[str, Any], sae: dict[str, Any]) -> str | None:
    from sae_lens.loading.pretrained_sae_loaders import get_gemma_2_config_from_hf

    try:
        return str(get_gemma_2_config_from_hf(release["repo_id"], str(sae["path"]), "cpu")["hook_name"])
    except (ValueError, StopIteration):
        return None


def hook_gemma_3(release: dict[str, Any], sae: dict[str, Any]) -> str | None:
    path = str(sae["path"])
    layer = re.search(r"layer_(\d+)", path)
    site = next((tl for name, tl in _GEMMA3_SITES if name in path), None)
    return f"blocks.{layer.group(1)}.{site}" if layer and site else None


def hook_llama_scope(release: dict[str, Any], sae: dict[str, Any]) -> str | None:
    m = re.search(r"L(\d+)(R|A|M|TC)(?:-|$)", str(sae["path"]))
    return f"blocks.{m.group(1)}.{_LLAMA_SITES[m.group(2)]}" if m else None


HOOK_RULES = {None: hook_sae_lens, "gemma_2": hook_gemma_2, "gemma_3": hook_gemma_3, "llama_scope": hook_llama_scope}


def entry(release: dict[str, Any], sae: dict[str, Any]) -> list[Any]:
    """[id, path (null when it is the id), hook, neuronpedia id, norm_scaling_factor]."""
    rule = HOOK_RULES.get(release.get("conversion_func"))
    path = str(sae["path"])
    return [str(sae["id"]), None if path == str(sae["id"]) else path, rule(release, sae) if rule else None,
            sae.get("neuronpedia"), sae.get("norm_scaling_factor")]


def release(rel: dict[str, Any]) -> dict[str, Any]:
    """A release's snapshot: its residual-stream SAEs (those NeuronLens can feed), and per other
    site how many SAEs were left out, so that asking for one is refused by name, not unknown."""
    out: dict[str, Any] = {"repo_id": rel["repo_id"], "model": rel["model"], "converter": rel.get("conversion_func")}
    if rel.get("config_overrides"):
        out["overrides"] = rel["config_overrides"]
    if rel.get("conversion_func") not in HOOK_RULES:  # a converter NeuronLens refuses by name: no SAE list needed
        out["saes"], out["left_out"] = [], {"all": len(rel["saes"])}
        return out
    kept, left_out = [], {}
    for sae in rel["saes"]:
        e = entry(rel, sae)
        if e[2] is None or _RESIDUAL.match(e[2]):
            kept.append(e)
        else:
            site = re.sub(r"^blocks\.\d+\.", "", e[2])
            left_out[site] = left_out.get(site, 0) + 1
    out["saes"] = kept
    if left_out:
        out["left_out"] = left_out
    return out


def snapshot(registry: dict[str, Any]) -> dict[str, Any]:
    releases = {name: release(rel) for name, rel in sorted(registry.items())}
    ids = [s[0] for r in releases.values() for s in r["saes"]]
    assert not [i for i in ids if "," in i], "an SAE id holds a comma, which RELEASE:ID1,ID2 uses"
    return {"source": f"sae-lens {version('sae-lens')} pretrained_saes.yaml",
            "fields": ["id", "path", "hook", "neuronpedia", "norm_scaling_factor"], "releases": releases}


def write(doc: dict[str, Any]) -> None:
    """One release per line, so a refresh diffs release by release."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in doc["releases"].items()]
    head = {k: v for k, v in doc.items() if k != "releases"}
    text = json.dumps(head, indent=1)[:-2] + ',\n "releases": {\n' + ",\n".join(lines) + "\n }\n}\n"
    assert json.loads(text) == doc
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")


def main() -> None:
    with files("sae_lens").joinpath("pretrained_saes.yaml").open("r") as f:
        registry = yaml.safe_load(f)
    doc = snapshot(registry)
    write(doc)
    n = sum(len(r["saes"]) for r in doc["releases"].values())
    unknown = sum(1 for r in doc["releases"].values() for s in r["saes"] if s[2] is None)
    print(f"{OUT}: {len(doc['releases'])} releases, {n} SAEs ({unknown} with no offline hook), {OUT.stat().st_size} bytes",
          file=sys.stderr)


if __name__ == "__main__":
    main()
