"""Proves that a sanitized build really has AddressSanitizer and UBSan armed.

Runs only in CI's sanitizer job (STEEPEST_TEST_SANITIZED=1), where the extension is
built with -fsanitize=address,undefined and exposes deliberate faults.
"""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("STEEPEST_TEST_SANITIZED") != "1", reason="only in the sanitizer build"
)


def _run_fault(kind: str, index: int) -> subprocess.CompletedProcess:
    code = f"import steepest; steepest._core._sanitizer_fault({kind!r}, {index})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_address_sanitizer_catches_heap_overflow():
    result = _run_fault("heap-overflow", 4)
    assert result.returncode != 0
    assert "AddressSanitizer: heap-buffer-overflow" in result.stderr


def test_ubsan_catches_signed_overflow():
    result = _run_fault("signed-overflow", 2)
    assert result.returncode != 0
    assert "runtime error: signed integer overflow" in result.stderr
