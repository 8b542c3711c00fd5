"""The type stubs ``arraydrain/_native.pyi`` describe the compiled module as it is: the same
functions, classes, methods and properties, with the same parameter names, order and defaults
(read from the module by introspection, compared with the stub's syntax tree)."""

from __future__ import annotations

import ast
import inspect
import pathlib

import pytest

import arraydrain
from arraydrain import _native

STUB = pathlib.Path(arraydrain.__file__).with_name("_native.pyi")

# What exists only when the engine is built with its CUDA backend.
CUDA_ONLY = {"DeviceBuffer", "cuda_status", "cuda_gather", "cuda_drain"}


def stub_tree() -> dict:
    """The stub's public functions and classes: name -> ast node."""
    tree = ast.parse(STUB.read_text())
    return {
        n.name: n
        for n in tree.body
        if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")
    }


def stub_params(fn: ast.FunctionDef, method: bool) -> list[tuple[str, bool]]:
    """``(name, has a default)`` of each parameter, ``self`` left out of methods."""
    args = fn.args.posonlyargs + fn.args.args
    defaults = [False] * (len(args) - len(fn.args.defaults)) + [True] * len(fn.args.defaults)
    params = [(a.arg, d) for a, d in zip(args, defaults)]
    params += [(a.arg, d is not None) for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults)]
    is_static = any(getattr(d, "id", None) == "staticmethod" for d in fn.decorator_list)
    if method and not is_static:
        params = params[1:]
    return params


def native_params(obj) -> list[tuple[str, bool]]:
    sig = inspect.signature(obj)
    return [
        (p.name, p.default is not inspect.Parameter.empty)
        for p in sig.parameters.values()
        if p.name != "self"
    ]


def native_names() -> set[str]:
    return {k for k in dir(_native) if not k.startswith("_")}


def test_the_stub_names_every_function_and_class_of_the_module_and_nothing_else():
    stub = set(stub_tree())
    native = native_names()
    assert native - stub == set(), f"in the module but not in _native.pyi: {native - stub}"
    missing = stub - native
    if not _native.cuda_compiled():
        missing -= CUDA_ONLY
    assert missing == set(), f"in _native.pyi but not in the module: {missing}"
    assert isinstance(_native.__version__, str)


@pytest.mark.parametrize(
    "name", sorted(n for n in native_names() if not isinstance(getattr(_native, n), type))
)
def test_function_signatures_match_the_stub(name):
    fn = stub_tree()[name]
    assert isinstance(fn, ast.FunctionDef), f"{name} is a function in the module"
    assert stub_params(fn, method=False) == native_params(getattr(_native, name)), name


@pytest.mark.parametrize(
    "name", sorted(n for n in native_names() if isinstance(getattr(_native, n), type))
)
def test_class_members_match_the_stub(name):
    cls = getattr(_native, name)
    node = stub_tree()[name]
    assert isinstance(node, ast.ClassDef), f"{name} is a class in the module"
    members = {n.name: n for n in node.body if isinstance(n, ast.FunctionDef)}
    # Properties and methods the module's class defines itself.
    native = {
        k: v
        for k, v in vars(cls).items()
        if not k.startswith("_") or k in ("__array_interface__", "__cuda_array_interface__")
    }
    stub_props = {
        k
        for k, n in members.items()
        if any(getattr(d, "id", None) == "property" for d in n.decorator_list)
    }
    native_props = {k for k, v in native.items() if inspect.isgetsetdescriptor(v)}
    assert stub_props == native_props, f"{name}: properties"
    stub_methods = {k for k in members if k not in stub_props and k != "__init__"}
    native_methods = {k for k in native if k not in native_props}
    assert stub_methods == native_methods, f"{name}: methods"
    for k in sorted(native_methods):
        assert stub_params(members[k], method=True) == native_params(getattr(cls, k)), (
            f"{name}.{k}"
        )
    # The constructor: the stub's __init__ exactly when the class can be made from Python.
    try:
        ctor = native_params(cls)
    except ValueError:
        ctor = None  # no constructor (made by the engine only)
    if ctor is None:
        assert "__init__" not in members, f"{name} has no constructor in the module"
    else:
        assert "__init__" in members, f"{name}: the module's constructor is not in the stub"
        assert stub_params(members["__init__"], method=True) == ctor, f"{name}.__init__"


def test_a_wrong_stub_is_caught(tmp_path):
    """The comparison can fail: a renamed parameter differs."""
    fn = ast.parse("def kept_rows(rows: int, size: int, drop_last: bool) -> int: ...").body[0]
    assert stub_params(fn, method=False) != native_params(_native.kept_rows)
