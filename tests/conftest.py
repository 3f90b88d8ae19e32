import os
import sys
import zlib

import numpy as np
import pytest

_TESTS = os.path.dirname(os.path.abspath(__file__))
# `import helpers` must work under any pytest import mode, not only "prepend".
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

# Prefer an installed steepest; fall back to an in-place build under python/.
try:
    import steepest  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(_TESTS), "python"))


@pytest.fixture
def rng(request):
    """A numpy Generator seeded from the test id: reproducible, different per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def torch_mod():
    """The torch module; the test is skipped when torch is not installed or turned off."""
    if os.environ.get("STEEPEST_TEST_NO_TORCH") == "1":
        pytest.skip("torch comparisons are turned off (STEEPEST_TEST_NO_TORCH=1)")
    return pytest.importorskip("torch")
