#!/usr/bin/env bash
# The wheels bench/gpu_e2e.sh carries to the GPU machine (Python 3.12, x86-64, no index there): the control
# side's dependencies that its image lacks (pip keeps the image's own where they satisfy), and the training
# venv's packages. About 56 MB, mostly bitsandbytes. Run here, from the repository root:
#   bash bench/gpu_e2e_wheels.sh [DEST]      (default .whl-e2e, ignored by git; name it in the call's carry)
set -eu
DEST=${1:-.whl-e2e}
mkdir -p "$DEST"
PLATFORM="--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312"
for tag in manylinux_2_34 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORM="$PLATFORM --platform ${tag}_x86_64"
done
python3 -m pip download -q $PLATFORM -d "$DEST" "ansible-core>=2.17,<2.20" "ansible-runner>=2.4" "jinja2>=3.1" \
  "pyyaml>=6" "pydantic>=2.7" "typer>=0.12" "rich>=13"
python3 -m pip download -q --no-deps $PLATFORM -d "$DEST" peft==0.21.2 nvidia-ml-py==13.615.71 bitsandbytes==0.50.2
du -sh "$DEST"
