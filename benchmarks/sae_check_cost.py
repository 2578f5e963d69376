"""What the audit's own SAE check costs: the default audit's two passes with the reconstruction
of the base residuals measured (every `RECONSTRUCTION_STRIDE`-th token, the default) and with it
off, interleaved, 3 rounds, medians, on the embedded demo pair (base pass cache off, so both sides
run both passes).

    python benchmarks/sae_check_cost.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics

from neuronlens import alignment
from neuronlens.config import AuditConfig
from neuronlens.demo import default_pair
from neuronlens.pipeline import Accumulator


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    base_src, ft_src = default_pair()
    base, ft = alignment.load_model(base_src), alignment.load_model(ft_src)
    cfg = AuditConfig()
    sae = alignment.load_sae(base, cfg.layers)
    alignment.compare_models(base, ft, sae, config=cfg, cache_base_pass=False)  # warm-up, caches filled
    default, off = Accumulator.reconstruction_stride, 10**12  # a stride past every batch: no token checked
    times: dict[str, list[float]] = {"with the check": [], "without": []}
    for _ in range(args.rounds):
        for label, stride in (("with the check", default), ("without", off)):
            Accumulator.reconstruction_stride = stride
            rep = alignment.compare_models(base, ft, sae, config=cfg, cache_base_pass=False)
            times[label].append(rep.timings["base_pass_s"] + rep.timings["ft_pass_s"])
    Accumulator.reconstruction_stride = default
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"audit passes, every {default}th token checked: {med['with the check']:.2f} s; without: {med['without']:.2f} s; "
          f"ratio {med['with the check'] / med['without']:.3f}")
    print(f"rounds: {{{', '.join(f'{k}: {[round(x, 2) for x in v]}' for k, v in times.items())}}}")


if __name__ == "__main__":
    main()
