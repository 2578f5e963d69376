"""Render the generated markdown of docs/ from the committed results data.

    python benchmarks/render.py            # (re)write every generated document from results/
    python benchmarks/render.py --check    # write nothing; exit 1 naming each document that differs

Benchmark results are data: `results/<benchmark>/<name>.json` (results/README.md describes them),
written by the benchmark that measured them, each naming the document it renders into (`doc`).
A document is generated whole unless it carries a block for the results file:

    <!-- generated: results/early_warning/x.json -->
    ...what the data renders to...
    <!-- end generated -->

Then only the block is replaced, and the prose around it stays as written by hand. A benchmark
run whose document has blocks but none for its results file gets a new block at the end. Which
function renders which folder: `tables.RENDERERS`; folders without one (results/truth) are data
that no document shows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tables  # noqa: E402

from neuronlens.errors import NeuronLensError  # noqa: E402
from neuronlens.files import write_text_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
DOCS = ROOT / "docs"
BEGIN = "<!-- generated: {} -->"
END = "<!-- end generated -->"


def results_files() -> list[Path]:
    """Every results file some document shows, in a fixed order."""
    return sorted(p for p in RESULTS.glob("*/*.json") if p.parent.name in tables.RENDERERS)


def repo_path(path: Path) -> str:
    """A path as the data and the markers write it: relative to the repository when inside it."""
    path = path.resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def rendering(data: dict) -> str:
    """The markdown a results file renders to (no trailing newline)."""
    benchmark = data.get("benchmark")
    if benchmark not in tables.RENDERERS:
        raise NeuronLensError(f"Results data of benchmark {benchmark!r}: no renderer for it.",
                              f"Use one of {', '.join(tables.RENDERERS)}, or add its function to benchmarks/tables.py.")
    return "\n".join(tables.RENDERERS[benchmark](data))


def place(doc: str | None, key: str, text: str) -> tuple[str, bool]:
    """The document with `text` in the block of results file `key`: (new text, whether the whole
    document is the rendering). Blocks elsewhere in the document and the prose stay as they are."""
    begin = BEGIN.format(key)
    if doc is not None and begin in doc:
        head, _, rest = doc.partition(begin + "\n")
        if (head and not head.endswith("\n")) or END not in rest:
            raise NeuronLensError(f"The block {begin} is not on a line of its own or has no {END}.",
                                  "Put each marker on its own line, the end marker after the block.")
        return head + begin + "\n" + text + "\n" + END + rest.split(END, 1)[1], False
    if doc is not None and "<!-- generated: " in doc:
        return doc.rstrip("\n") + "\n\n" + begin + "\n" + text + "\n" + END + "\n", False
    return text + "\n", True


def documents(files: list[Path] | None = None) -> dict[Path, str]:
    """Each document the results files render into, as the committed data renders it (documents on
    disk supply the prose around blocks)."""
    out: dict[Path, str] = {}
    whole: dict[Path, Path] = {}
    for path in results_files() if files is None else files:
        data = json.loads(path.read_text(encoding="utf-8"))
        doc = ROOT / data["doc"]  # a relative `doc` is the repository's; an absolute one stays itself
        current = out.get(doc, doc.read_text(encoding="utf-8") if doc.is_file() else None)
        out[doc], is_whole = place(current, repo_path(path), rendering(data))
        if is_whole and doc in whole:
            raise NeuronLensError(f"{repo_path(path)} and {repo_path(whole[doc])} both render the whole of {repo_path(doc)}.",
                                  f"Give each its own document, or mark a block for each in {repo_path(doc)}.")
        if is_whole:
            whole[doc] = path
    return out


def results_path(benchmark: str, doc: Path, name: str | None = None) -> Path:
    """Where a run's data goes: results/<benchmark>/<name>.json for a document of docs/ or the README
    (name: the document's name in lower case unless given), beside the document for any other."""
    stem = name or doc.stem.lower()
    ours = doc.resolve().parent == DOCS.resolve() or doc.resolve() == ROOT / "README.md"
    return RESULTS / benchmark / f"{stem}.json" if ours else doc.with_name(f"{name or doc.stem}.json")


def publish(data: dict, doc: Path, name: str | None = None) -> Path:
    """Write a run's results data (with when and at which commit it was recorded) and render its
    document from it. Returns the results file."""
    path = results_path(data["benchmark"], doc, name)
    rest = {k: v for k, v in data.items() if k not in ("benchmark", "doc", "recorded")}
    data = {"benchmark": data["benchmark"], "doc": repo_path(doc), "recorded": data.get("recorded") or recorded(), **rest}
    write_text_atomic(path, dumps(data))
    text, _ = place(doc.read_text(encoding="utf-8") if doc.is_file() else None, repo_path(path), rendering(data))
    write_text_atomic(doc, text)
    print(f"wrote {repo_path(path)} and rendered {repo_path(doc)} from it")
    return path


def recorded() -> dict:
    """Today's date and the repository's commit (with `dirty` when the work tree has changes)."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    status = git("status", "--porcelain", "--untracked-files=no")
    dirty = None if status is None else bool(status)
    return {"date": datetime.date.today().isoformat(), "commit": git("rev-parse", "HEAD"), "dirty": dirty}


def dumps(obj: object) -> str:
    """JSON with one line per short record (containers that fit in 120 characters stay on one line);
    a NaN or an infinity is recorded as null (JSON has neither)."""
    return _dumps(_finite(obj), "") + "\n"


def _finite(obj: object) -> object:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _dumps(obj: object, indent: str) -> str:
    flat = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    if len(indent) + len(flat) <= 120 or not isinstance(obj, (dict, list)) or not obj:
        return flat
    inner = indent + " "
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {_dumps(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    return "[\n" + ",\n".join(inner + _dumps(v, inner) for v in obj) + "\n" + indent + "]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="Write nothing; exit 1 if a document differs from what its data renders to.")
    args = ap.parse_args()
    try:
        docs = documents()
    except NeuronLensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    stale = [doc for doc, text in docs.items() if not doc.is_file() or doc.read_text(encoding="utf-8") != text]
    if args.check:
        for doc in stale:
            print(f"{repo_path(doc)} differs from what its results data renders to (run python benchmarks/render.py)")
        print(f"{len(docs) - len(stale)} of {len(docs)} generated documents match their data")
        raise SystemExit(1 if stale else 0)
    for doc in stale:
        write_text_atomic(doc, docs[doc])
    print(f"rendered {len(docs)} documents from {len(results_files())} results files; {len(stale)} changed")


if __name__ == "__main__":
    main()
