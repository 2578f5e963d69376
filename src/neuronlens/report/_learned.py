"""What the fine-tune appears to have been trained on (the report's Activation Difference Lens
section), as a summary line and as an HTML section. Evidence only: it carries no verdict weight."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..learned import LayerLens, LearnedLens, TokenScore

TITLE = "What this fine-tune appears to have been trained on"
SUMMARY_TOKENS = 6
HTML_TOKENS = 12
SAMPLE_CHARS = 120
INTRO = (
    "Activation Difference Lens (Minder et al. 2025): the mean fine-tuned minus base residual at the first tokens of "
    "text unrelated to the probes ({source}, {n} texts), read through the base model's logit lens (the tokens it "
    "promotes and suppresses) and added to the base model's residual stream to steer a few samples. It shows what the "
    "fine-tune's data was about; it carries no weight in the verdict."
)


def token_list(tokens: tuple[TokenScore, ...], k: int) -> str:
    """The first `k` tokens as Python literals (their spaces visible): "' value', ' real'"."""
    return ", ".join(repr(t.token) for t in tokens[:k])


def clip(text: str, limit: int = SAMPLE_CHARS) -> str:
    """`text` on one line, cut to `limit` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "\u2026"


def summary_lines(lens: LearnedLens | None) -> list[str]:
    """One line per lens layer for the text summary (none when the audit ran no lens)."""
    if lens is None:
        return []
    return [_summary_line(layer) for layer in lens.layers]


def _summary_line(layer: LayerLens) -> str:
    head = f"What it appears to have learned (layer {layer.layer}):"
    if layer.pooled.diff_norm == 0:
        return f"{head} nothing (the models do not differ on neutral text)"
    line = f"{head} promoted tokens {token_list(layer.pooled.promoted, SUMMARY_TOKENS)}"
    sample = next((s for s in (layer.steering.steered if layer.steering else ()) if s.strip()), None)
    return line + (f"; steered sample: \"{clip(sample)}\"" if sample is not None else "")


def html_section(lens: LearnedLens | None) -> str:
    """The report's section (empty when the audit ran no lens)."""
    if lens is None:
        return ""
    intro = f"<p class=\"muted\">{escape(INTRO.format(source=lens.text_source, n=lens.n_texts))}</p>"
    return f"<h2>{TITLE}</h2>{intro}" + "".join(_html_layer(layer) for layer in lens.layers)


def _html_layer(layer: LayerLens) -> str:
    head = f"<h3>Layer {layer.layer} &middot; shift {layer.relative_shift:.1%} of the base model's residual norm</h3>"
    if layer.pooled.diff_norm == 0:
        return head + "<p>No difference between the models on the texts read.</p>"
    promoted, suppressed = layer.pooled.promoted[:HTML_TOKENS], layer.pooled.suppressed[:HTML_TOKENS]
    rows = "".join(
        f"<tr><td class=\"num\">{i + 1}</td>{_token_cells(promoted, i)}{_token_cells(suppressed, i)}</tr>"
        for i in range(max(len(promoted), len(suppressed)))
    )
    tokens = (
        "<table class=\"lens\"><tr><th>#</th><th>promoted token</th><th>probability</th><th>suppressed token</th>"
        f"<th>probability</th></tr>{rows}</table>"
    )
    return head + tokens + _html_samples(layer)


def _token_cells(tokens: tuple[TokenScore, ...], i: int) -> str:
    if i >= len(tokens):
        return "<td></td><td></td>"
    return f"<td><code>{escape(repr(tokens[i].token))}</code></td><td class=\"num\">{tokens[i].prob:.3f}</td>"


def _html_samples(layer: LayerLens) -> str:
    st = layer.steering
    if st is None:
        return ""
    rows = "".join(
        f"<tr><td>{escape(p)}</td><td>{escape(s)}</td><td>{escape(u)}</td></tr>"
        for p, s, u in zip(st.prompts, st.steered, st.unsteered)
    )
    return (
        f"<p class=\"muted\">The base model steered with the difference (x{st.factor:g} its typical residual norm, sampled at "
        f"temperature {st.temperature:g}, seed {st.seed}), beside its unsteered samples with the same seed.</p>"
        f"<table class=\"lens\"><tr><th>prompt</th><th>steered</th><th>unsteered</th></tr>{rows}</table>"
    )
