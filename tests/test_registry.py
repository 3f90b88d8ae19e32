"""The registry check (tools/check_registry.py): every kernel has a CPU and a CUDA entry,
every backward node and every op of st.ops an entry in tests/op_checks.py, and every
entry a check_op test. Each failure case removes one entry from a temporary copy of the
sources and shows that the check names it."""

import importlib.util
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_registry", ROOT / "tools" / "check_registry.py")
registry = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(registry)


def test_the_registry_is_complete():
    assert registry.check(ROOT) == []


@pytest.fixture
def tree(tmp_path):
    """A copy of what the check reads."""
    for folder in ("cpp", "cuda"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    (tmp_path / "python/steepest").mkdir(parents=True)
    shutil.copy(ROOT / "python/steepest/ops.py", tmp_path / "python/steepest/ops.py")
    (tmp_path / "tests").mkdir()
    for path in ROOT.glob("tests/*.py"):
        shutil.copy(path, tmp_path / "tests" / path.name)
    return tmp_path


def _edit(path, old, new, count=1):
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, count))


def _definition_file(folder, kernel):
    for path in sorted(folder.rglob("*")):
        if path.suffix in (".cpp", ".cu", ".h", ".cuh") and path.name != "no_cuda.cpp" and \
                re.search(rf"\bvoid\s+{kernel}\s*\(", path.read_text()):
            return path
    raise AssertionError(f"no definition of {kernel} under {folder}")


def test_a_kernel_without_cuda_definition_fails(tree):
    path = _definition_file(tree / "cuda", "embedding_forward")
    _edit(path, "embedding_forward(", "embedding_forward_renamed(", count=-1)
    # A declaration is not a definition.
    (tree / "cuda/declarations.cuh").write_text(
        "void embedding_forward(const Tensor& indices, const Tensor& table, Tensor& out);\n")
    assert "kernel embedding_forward (kernels.def) has no CUDA definition" in "\n".join(registry.check(tree))


def test_a_kernel_without_cpu_definition_fails(tree):
    path = _definition_file(tree / "cpp/cpu", "dropout_mask")
    _edit(path, "dropout_mask(", "dropout_mask_renamed(", count=-1)
    assert "kernel dropout_mask (kernels.def) has no CPU definition in cpp/cpu/" in registry.check(tree)


def test_a_kernel_may_lack_cuda_only_with_a_listed_reason(tree):
    path = _definition_file(tree / "cuda", "embedding_forward")
    _edit(path, "embedding_forward(", "embedding_forward_renamed(", count=-1)
    table = tree / "tests/op_checks.py"
    _edit(table, "KERNELS_WITHOUT_CUDA = {}", 'KERNELS_WITHOUT_CUDA = {"embedding_forward": "not written yet"}')
    assert registry.check(tree) == []
    _edit(table, '"not written yet"', '""')
    assert registry.check(tree) == ["KERNELS_WITHOUT_CUDA['embedding_forward'] needs a reason"]


def test_a_missing_op_check_entry_fails(tree):
    table = tree / "tests/op_checks.py"
    text = table.read_text()
    line = next(l for l in text.splitlines() if l.strip().startswith('"flip":'))
    table.write_text(text.replace(line + "\n", ""))
    problems = registry.check(tree)
    assert "backward node FlipBackward belongs to no op of OPS in tests/op_checks.py: add the op with its " \
           "check_op tests" in problems
    assert any(p.startswith("st.ops.flip is in neither OPS") for p in problems)
    assert "test_everyday_ops.py::test_flip calls check_op but no op of OPS in tests/op_checks.py names it" \
        in problems


def test_a_new_backward_node_without_entry_fails(tree):
    _edit(tree / "cpp/ops/backward.h", "STEEPEST_NODE_NAME(MulBackward)",
          "STEEPEST_NODE_NAME(MulBackward)\n  STEEPEST_NODE_NAME(FusedMulBackward)")
    assert any(p.startswith("backward node FusedMulBackward belongs to no op") for p in registry.check(tree))


def test_a_new_st_ops_function_must_be_classified(tree):
    _edit(tree / "python/steepest/ops.py", "    abs,\n", "    abs,\n    hypot,\n")
    assert any(p.startswith("st.ops.hypot is in neither OPS") for p in registry.check(tree))


def test_an_entry_needs_a_check_op_test(tree):
    table = tree / "tests/op_checks.py"
    _edit(table, '"flip": {"nodes": ["FlipBackward"], "tests": ["test_everyday_ops.py::test_flip"]}',
          '"flip": {"nodes": ["FlipBackward"], "tests": []}')
    assert "op flip names no check_op test" in registry.check(tree)
    _edit(table, '"flip": {"nodes": ["FlipBackward"], "tests": []}',
          '"flip": {"nodes": ["FlipBackward"], "tests": ["test_everyday_ops.py::test_split_ok"]}')
    assert "op flip: test test_everyday_ops.py::test_split_ok does not exist" in registry.check(tree)


def test_a_named_test_must_call_check_op(tree):
    _edit(tree / "tests/test_everyday_ops.py", "def test_flip(", "def test_flip_old(")
    _edit(tree / "tests/test_everyday_ops.py", "def test_flip_old(", "def test_flip():\n    pass\n\n\ndef _flip(")
    assert "op flip: test test_everyday_ops.py::test_flip does not call check_op" in registry.check(tree)


def test_a_node_named_by_an_entry_must_exist(tree):
    _edit(tree / "tests/op_checks.py", '"nodes": ["FlipBackward"]', '"nodes": ["FlipBackward", "ReverseBackward"]')
    assert "op flip: backward node ReverseBackward is not defined in cpp/" in registry.check(tree)


def test_a_unary_op_without_a_test_row_fails(tree):
    _edit(tree / "tests/test_elementwise.py", '    "gelu": (ops.gelu,', '    "gelu_renamed": (ops.gelu,')
    assert "unary op gelu (unary_ops.def) has no row in the UNARY table" in "\n".join(registry.check(tree))
