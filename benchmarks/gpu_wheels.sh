#!/usr/bin/env bash
# Downloads into .whl/ the Python 3.12 wheels that the lent H200 image lacks (the data stack,
# ml_collections, tensorboardX; versions of requirements.lock), for benchmarks/gpu_suite.sh to
# install there. Run it on the session's own machine, which has a package index; about 11 MB.
#
#   bash benchmarks/gpu_wheels.sh        # then run(..., carry=['.whl'])
#
# The image already holds jax 0.11, flax, optax, orbax, tokenizers, torch, transformers, numpy,
# protobuf, etils, absl-py, pyarrow, requests, tqdm, wrapt, cloudpickle, PyYAML, six, attrs
# (/work/.library/device/KINDS.md). promise has no wheel on PyPI: it is built here (pure Python).
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl  # ignored by .gitignore
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  ml_collections==1.1.0 tensorflow-datasets==4.9.10 grain==0.2.18 array_record==0.8.6 \
  dm-tree==0.1.10 immutabledict==4.3.1 simple-parsing==0.1.9 docstring_parser==0.18.0 \
  tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0 termcolor==3.3.0 toml==0.10.2 \
  portpicker==1.6.0 tensorboardX==2.6.5
"$PY" -m pip wheel -q --no-deps -w .whl promise==2.3
ls .whl
