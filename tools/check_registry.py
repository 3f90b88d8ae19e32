"""The registry check (tests/test_registry.py runs it; also `python3 tools/check_registry.py`).

It reads the sources, runs nothing, and reports what is missing:
- every kernel declared in cpp/include/steepest/kernels.def has a CPU definition (cpp/cpu/)
  and a CUDA definition (cuda/), unless tests/op_checks.py lists it in
  KERNELS_WITHOUT_CUDA with a reason;
- every backward node the engine defines (its name(): STEEPEST_NODE_NAME, a "...Backward"
  literal, or one per entry of STEEPEST_UNARY_OPS) belongs to an op of OPS in
  tests/op_checks.py, and every node named there exists;
- every op of st.ops (python/steepest/ops.py) is in OPS or in NOT_DIFFERENTIABLE;
- every OPS entry names at least one test, and each named test is a test function that
  calls check_op (float64 gradcheck + torch parity); every test function that calls
  check_op is named by some entry.
"""

from __future__ import annotations

import ast
import re
import runpy
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Set

_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


def _code(path: Path) -> str:
    return _COMMENT.sub("", path.read_text())


def _files(root: Path, folder: str, suffixes: Iterable[str]) -> List[Path]:
    return sorted(p for p in (root / folder).rglob("*") if p.suffix in set(suffixes) and p.is_file())


def kernel_names(root: Path) -> List[str]:
    return re.findall(r"^\s*KERNEL\(\s*(\w+)\s*,", _code(root / "cpp/include/steepest/kernels.def"), re.M)


def defined_functions(paths: Iterable[Path]) -> Set[str]:
    """Names of the void functions defined (with a body, not only declared) in paths."""
    names: Set[str] = set()
    for path in paths:
        names.update(re.findall(r"\bvoid\s+(\w+)\s*\([^;{}]*\)\s*\{", _code(path)))
    return names


def node_names(root: Path) -> Set[str]:
    sources = _files(root, "cpp", (".cpp", ".h"))
    names: Set[str] = set()
    for path in sources:
        code = _code(path)
        names.update(n for n in re.findall(r"STEEPEST_NODE_NAME\(\s*(\w+)\s*\)", code) if n != "type")
        names.update(re.findall(r'"(\w+Backward)"', code))
    # Each row of the unary table is a node named <Name>Backward (UnaryBackward::name()).
    table = _code(root / "cpp/include/steepest/unary_ops.def")
    names.update(f"{op}Backward" for op in re.findall(r"^UNARY_OP(?:_NO_SAVE)?\((\w+)", table, re.M))
    return names


def st_ops_names(root: Path) -> Set[str]:
    tree = ast.parse((root / "python/steepest/ops.py").read_text())
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            names.add(node.name)
    return names


def _calls(function: ast.AST) -> Set[str]:
    called: Set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name):
                called.add(node.func.id)
            elif isinstance(node.func, ast.Attribute):
                called.add(node.func.attr)
    return called


def check_op_tests(root: Path) -> Dict[str, bool]:
    """Every top-level test function, as "file::name", and whether it calls check_op
    (directly or through a helper function of its module)."""
    found: Dict[str, bool] = {}
    for path in sorted((root / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        helpers = {name for name, f in functions.items() if not name.startswith("test") and "check_op" in _calls(f)}
        for name, function in functions.items():
            if name.startswith("test"):
                calls = _calls(function)
                found[f"{path.name}::{name}"] = "check_op" in calls or bool(calls & helpers)
    return found


def load_table(root: Path) -> Dict[str, object]:
    return runpy.run_path(str(root / "tests/op_checks.py"))


UNARY_TEST = "test_elementwise.py::test_unary"


def unary_functions(root: Path) -> Dict[str, str]:
    """The st.ops functions the unary table generates (UNARY_FUNCTION rows), each with its
    UnaryOp name."""
    table = _code(root / "cpp/include/steepest/unary_ops.def")
    return dict(re.findall(r"^UNARY_FUNCTION\((\w+),\s*(\w+)", table, re.M))


def unary_test_rows(root: Path) -> Set[str]:
    """The keys of the UNARY table that test_unary runs check_op over."""
    tree = ast.parse((root / "tests/test_elementwise.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "UNARY" for t in node.targets) \
                and isinstance(node.value, ast.Dict):
            return {k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    return set()


def with_unary_ops(root: Path, ops: Dict[str, Dict[str, List[str]]], problems: List[str]) -> Dict[str, Dict[str, List[str]]]:
    """OPS plus an entry for each function of the unary table: its node and test_unary,
    whose UNARY table must have a row for it. A unary op is thus declared in
    unary_ops.def and test_elementwise.py only; an OPS entry may add further tests."""
    merged = {op: {key: list(values) for key, values in entry.items()} for op, entry in ops.items()}
    rows = unary_test_rows(root)
    for function, name in unary_functions(root).items():
        entry = merged.setdefault(function, {"nodes": [], "tests": []})
        for key, value in (("nodes", f"{name}Backward"), ("tests", UNARY_TEST)):
            if value not in entry.setdefault(key, []):
                entry[key].append(value)
        if function not in rows:
            problems.append(f"unary op {function} (unary_ops.def) has no row in the UNARY table of "
                            "tests/test_elementwise.py, which runs its check_op")
    return merged


def check(root: Path) -> List[str]:
    problems: List[str] = []
    table = load_table(root)
    ops = with_unary_ops(root, table["OPS"], problems)  # type: ignore[arg-type]
    not_differentiable: Dict[str, str] = table["NOT_DIFFERENTIABLE"]  # type: ignore[assignment]
    without_cuda: Dict[str, str] = table["KERNELS_WITHOUT_CUDA"]  # type: ignore[assignment]
    nodes_without_op: Dict[str, str] = table["NODES_WITHOUT_OP"]  # type: ignore[assignment]

    kernels = kernel_names(root)
    cpu = defined_functions(_files(root, "cpp/cpu", (".cpp", ".h")))
    cuda = defined_functions(p for p in _files(root, "cuda", (".cu", ".cuh", ".cpp", ".h")) if p.name != "no_cuda.cpp")
    for kernel in kernels:
        if kernel not in cpu:
            problems.append(f"kernel {kernel} (kernels.def) has no CPU definition in cpp/cpu/")
        if kernel in without_cuda:
            if kernel in cuda:
                problems.append(f"kernel {kernel} has a CUDA definition: remove it from KERNELS_WITHOUT_CUDA")
            if not str(without_cuda[kernel]).strip():
                problems.append(f"KERNELS_WITHOUT_CUDA[{kernel!r}] needs a reason")
        elif kernel not in cuda:
            problems.append(f"kernel {kernel} (kernels.def) has no CUDA definition in cuda/; write one, or list it "
                            "in KERNELS_WITHOUT_CUDA (tests/op_checks.py) with the reason")
    for kernel in sorted(set(without_cuda) - set(kernels)):
        problems.append(f"KERNELS_WITHOUT_CUDA names {kernel}, which kernels.def does not declare")

    defined_nodes = node_names(root)
    claimed: Set[str] = set()
    for op, entry in ops.items():
        for node in entry.get("nodes", []):
            claimed.add(node)
            if node not in defined_nodes:
                problems.append(f"op {op}: backward node {node} is not defined in cpp/")
    for node in sorted(defined_nodes - claimed - set(nodes_without_op)):
        problems.append(f"backward node {node} belongs to no op of OPS in tests/op_checks.py: add the op with "
                        "its check_op tests")
    for node in sorted(set(nodes_without_op) - defined_nodes):
        problems.append(f"NODES_WITHOUT_OP names {node}, which cpp/ does not define")

    for op in sorted(st_ops_names(root)):
        if op in ops and op in not_differentiable:
            problems.append(f"st.ops.{op} is in both OPS and NOT_DIFFERENTIABLE")
        elif op not in ops and op not in not_differentiable:
            problems.append(f"st.ops.{op} is in neither OPS (with its backward nodes and check_op tests) nor "
                            "NOT_DIFFERENTIABLE in tests/op_checks.py")

    tests = check_op_tests(root)
    named: Set[str] = set()
    for op, entry in ops.items():
        if not entry.get("tests"):
            problems.append(f"op {op} names no check_op test")
        if "nodes" not in entry:
            problems.append(f"op {op} names no backward nodes (an empty list for a composite)")
        for test in entry.get("tests", []):
            named.add(test)
            if test not in tests:
                problems.append(f"op {op}: test {test} does not exist")
            elif not tests[test]:
                problems.append(f"op {op}: test {test} does not call check_op")
    for test in sorted(t for t, uses in tests.items() if uses and t not in named):
        problems.append(f"{test} calls check_op but no op of OPS in tests/op_checks.py names it")
    return problems


def main(argv: List[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    problems = check(root)
    for problem in problems:
        print(problem)
    print(f"registry: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
