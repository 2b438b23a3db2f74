#!/usr/bin/env bash
# Here, before a device run: the wheels the device image lacks, into .whl/ (ignored; name it in the run's carry).
# The image (the device tool's KINDS.md, read 2026-11-17) runs Python 3.12 with torch, numpy, scipy, pandas,
# scikit-learn, matplotlib, pluggy, attrs, click, tqdm, pytest, pytest-xdist and hypothesis, and has no network.
# MISSING is what advbayes and its plugins need beyond it: the dependency closure of mlflow, tomli-w, mlxtend,
# torchattacks, pyautoattack and pyro-ppl for CPython 3.12 (pip download, 2026-12-05) less the image's packages.
# Fetched without their dependencies (which are these or the image's), about 40 MB with pyautoattack's 44 MB
# example model removed: the carried tree is limited to 64 MiB in all.
MISSING=(alembic annotated-types blinker cachetools cffi cryptography databricks-sdk docker fastapi flask flask-cors
    gitdb gitpython google-auth graphene graphql-core graphql-relay gunicorn huey importlib-metadata itsdangerous mako
    mlflow mlflow-skinny mlflow-tracing mlxtend opentelemetry-api opentelemetry-proto opentelemetry-sdk
    opentelemetry-semantic-conventions prettytable pyasn1 pyasn1-modules pyautoattack pycparser pydantic
    pydantic-core python-dotenv skops smmap sqlalchemy sqlparse starlette tomli-w torchattacks typing-inspection
    uvicorn wcwidth pyro-ppl pyro-api)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --no-deps -d "$scratch" "${MISSING[@]}"
rm -rf .whl && mv "$scratch" .whl && trap - EXIT
# pyautoattack ships a 44 MB example model that nothing imports: drop it (and its RECORD lines) from the copy
for wheel in .whl/pyautoattack-*.whl; do
    [[ -e $wheel ]] || continue
    python3 - "$wheel" <<'PY'
import sys, zipfile
path = sys.argv[1]
with zipfile.ZipFile(path) as source:
    items = [(i, source.read(i)) for i in source.infolist() if "/examples/" not in i.filename]
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
    for info, data in items:
        if info.filename.endswith(".dist-info/RECORD"):
            data = b"\n".join(line for line in data.split(b"\n") if b"/examples/" not in line)
        target.writestr(info, data)
PY
done
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/ (carry: [\".whl\"])"
