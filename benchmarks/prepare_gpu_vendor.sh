#!/usr/bin/env bash
# Prepare vendor/ for the GPU check machine (Python 3.12, torch 2.11, transformers 5.17; no network,
# no datasets/webdataset/albumentations/deepspeed; only the repository travels, not ../shared).
#
#   bash benchmarks/prepare_gpu_vendor.sh          # here, with network: fills vendor/ (ignored by git)
#   # there (the device tool, carry=["vendor"]):
#   pip install --no-index --no-deps --target /tmp/vendor-site vendor/wheels/*.whl
#   PYTHONPATH=$PWD:/tmp/vendor-site python benchmarks/gpu_check.py
#
# vendor/wheels: cp312 manylinux wheels of what the GPU machine lacks (albumentations and its small
# compiled helpers, webdataset, deepspeed built here from its sdist with no prebuilt ops, and the
# light dependencies those need); numpy, scipy, opencv, pyyaml, torch stay the machine's own.
# vendor/photos: the real photos the labeling rows use (../shared/data/photos). Total < 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
out=vendor/wheels
rm -rf vendor && mkdir -p "$out" vendor/photos
platform=(--python-version 3.12 --implementation cp --only-binary=:all:
          --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
"$PY" -m pip download -q --no-deps -d "$out" "${platform[@]}" \
    albumentations==2.0.8 albucore==0.0.24 simsimd stringzilla webdataset==1.0.2 braceexpand \
    pydantic pydantic-core annotated-types typing-inspection typing-extensions \
    hjson py-cpuinfo msgpack ninja einops 2>&1 | grep -v "is ignored" || true
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$out" "deepspeed>=0.15" 2>&1 | grep -v "is ignored" || true
if [ -d ../shared/data/photos ]; then cp ../shared/data/photos/*.jpg vendor/photos/; fi
ls "$out"
du -sh vendor
