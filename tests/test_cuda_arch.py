"""The compute-capability check of a GPU's first use (cuda/runtime.cu), through the pure
rule it calls (cpp/include/steepest/cuda_arch.h), so it is tested without a GPU: a cubin runs
on its major version at an equal or higher minor version, PTX on its version and newer.
"""

import re

import pytest

import steepest as st
from steepest import _core

# The default build's list (CMakeLists.txt, nvcc 13).
DEFAULT = "75-real,80-real,86-real,89-real,90-real,90-virtual"


@pytest.mark.parametrize("major, minor", [
    (7, 5),   # T4: its own cubin
    (8, 0),   # A100
    (8, 6),   # A10, RTX 30xx
    (8, 7),   # Orin: the sm_86 cubin, same major, lower minor
    (8, 9),   # L4, RTX 40xx
    (9, 0),   # H100
    (10, 0),  # B200: compute_90 PTX, compiled by the driver
    (12, 0),  # RTX 50xx: the same PTX
])
def test_supported_devices_pass(major, minor):
    assert _core._cuda_arch_mismatch("cuda:0 (GPU)", major, minor, DEFAULT) == ""


def test_older_device_names_itself_its_capability_and_the_build():
    msg = _core._cuda_arch_mismatch("cuda:1 (Tesla V100-SXM2-16GB)", 7, 0, DEFAULT)
    assert msg.startswith("[cuda] cuda:1 (Tesla V100-SXM2-16GB) has compute capability 7.0")
    assert "sm_75, sm_80, sm_86, sm_89, sm_90" in msg
    assert "PTX for compute_90" in msg
    assert "CUDAARCHS=70" in msg


def test_a_cubin_does_not_run_on_a_lower_minor_or_another_major():
    # sm_86 machine code only: an 8.0 GPU (lower minor) and a 9.0 one (other major) cannot
    # run it, an 8.9 one can.
    assert _core._cuda_arch_mismatch("g", 8, 0, "86-real") != ""
    assert _core._cuda_arch_mismatch("g", 9, 0, "86-real") != ""
    assert _core._cuda_arch_mismatch("g", 8, 9, "86-real") == ""


def test_ptx_runs_on_newer_but_not_older_devices():
    assert _core._cuda_arch_mismatch("g", 12, 0, "80-virtual") == ""
    msg = _core._cuda_arch_mismatch("g", 7, 5, "80-virtual")
    assert "PTX for compute_80" in msg and "machine code" not in msg


def test_plain_entries_and_arch_specific_ones():
    # "86" is both a cubin and PTX; "90a" code runs on 9.0 only.
    assert _core._cuda_arch_mismatch("g", 12, 0, "86") == ""
    assert _core._cuda_arch_mismatch("g", 9, 0, "90a-real") == ""
    assert "sm_90a" in _core._cuda_arch_mismatch("g", 10, 0, "90a-real")


@pytest.mark.parametrize("archs", ["", "native", "all-major"])
def test_a_list_without_versions_is_not_judged(archs):
    assert _core._cuda_arch_mismatch("g", 5, 0, archs) == ""


def test_backends_name_the_built_architectures():
    archs = st.backends()["cuda_archs"]
    assert isinstance(archs, list)
    if not st.backends()["cuda_compiled"]:
        assert archs == []
    else:
        assert archs and all(re.fullmatch(r"\d+[af]?(-real|-virtual)?|[a-z-]+", a) for a in archs)
        # The default check uses the build's own list.
        assert _core._cuda_arch_mismatch("g", 9, 0) == _core._cuda_arch_mismatch(
            "g", 9, 0, ",".join(archs))
