"""Probe sets: built-in sets, custom files, and clear errors for bad files."""

from __future__ import annotations

import pytest

from neuronlens.errors import ProbeError
from neuronlens.probes import builtin_names, load_probe_set

DOMAINS = ["finance", "legal", "customer_support", "medical", "coding", "general"]


def test_builtin_sets_are_complete():
    assert set(DOMAINS + ["emergent_misalignment"]) <= set(builtin_names())
    for name in DOMAINS:
        ps = load_probe_set(name)
        assert len(ps.prompts) >= 50 and len(set(ps.prompts)) == len(ps.prompts)
    em = load_probe_set("emergent_misalignment").prompts
    assert len(em) == 8 and "quick buck" in em[3].lower() and "husband" in em[7].lower()


def test_max_prompts_and_digest():
    full, part = load_probe_set("finance"), load_probe_set("finance", 5)
    assert part.prompts == tuple(full.prompts[i] for i in (0, 12, 24, 36, 48)) and part.digest != full.digest
    assert load_probe_set("finance", 5).digest == part.digest


def test_custom_formats(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"prompt": "one"}\n\n{"messages": [{"role": "user", "content": "two"}]}\n')
    (tmp_path / "b.csv").write_text("id,prompt\n1,first\n2,\"second, with comma\"\n")
    (tmp_path / "c.txt").write_text("alpha\n\nbeta\n")
    assert load_probe_set(tmp_path / "a.jsonl").prompts == ("one", "two")
    assert load_probe_set(tmp_path / "b.csv").prompts == ("first", "second, with comma")
    ps = load_probe_set(tmp_path / "c.txt")
    assert ps.prompts == ("alpha", "beta") and ps.name == "c"


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("bad.jsonl", '{"prompt": "ok"}\n{not json}\n', "line 2: not valid JSON"),
        ("noprompt.jsonl", '{"prompt": "ok"}\n{"foo": 1}\n', "line 2: no prompt found"),
        ("empty.txt", "\n\n", "holds no prompts"),
        ("nocol.csv", "a,b\n1,2\n", "no 'prompt' column"),
        ("badq.csv", 'prompt,x\n"unterminated,1\nok,2\n', r'line 2: a quoted field opens here and is never closed'),
        ("badq2.csv", 'prompt,x\nok,1\n"a\nb",2\n"oops,3\n', r"line 5: a quoted field opens"),
        ("stray.csv", 'prompt,x\nok,1\n"bad"x,2\n', r"line 3: malformed CSV quoting"),
        ("short.csv", 'x,prompt\n"a\nb",p\n3\n', r"line 4: missing the prompt column"),
        ("x.yaml", "- a\n", "unknown extension"),
    ],
)
def test_bad_files(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(ProbeError, match=match):
        load_probe_set(tmp_path / name)


def test_unknown_set_lists_the_builtins():
    with pytest.raises(ProbeError, match="finance"):
        load_probe_set("no_such_set")
