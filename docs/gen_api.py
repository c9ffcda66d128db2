"""Write docs/api.md, the reference of neurosim's public Python API, from the docstrings.

    python docs/gen_api.py            # rewrite docs/api.md
    python docs/gen_api.py --check    # exit 1 if docs/api.md is out of date

The public API is every name in the ``__all__`` of the modules listed in MODULES; for a class
its public methods and properties are listed too. tests/test_api_docs.py checks that every
one of them has a docstring and that docs/api.md is current.
"""
from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

MODULES = [
    "neurosim.graph", "neurosim.dynamics", "neurosim.solvers", "neurosim.simulation",
    "neurosim.stimuli", "neurosim.plasticity", "neurosim.protocols", "neurosim.metrics",
    "neurosim.training", "neurosim.io", "neurosim.data", "neurosim.models",
    "neurosim.registry", "neurosim.errors", "neurosim.pid",
]
OUT = Path(__file__).resolve().parent / "api.md"


def public_members(cls) -> list[tuple[str, object]]:
    """Public methods and properties defined by ``cls`` itself (not inherited)."""
    members = []
    for name, value in cls.__dict__.items():
        if name.startswith("_") and name != "__call__":
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            members.append((name, value))
    return members


def api_objects():
    """(module name, module, [(name, object)]) for every public module, objects first seen
    there (an object re-exported by a later module is documented once)."""
    seen = set()
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        names = getattr(module, "__all__", None)
        if names is None:
            raise SystemExit(f"{module_name} has no __all__; declare its public names.")
        objects = []
        for name in names:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)) or id(obj) in seen:
                continue
            seen.add(id(obj))
            objects.append((name, obj))
        yield module_name, module, objects


def member_doc(cls, name: str) -> str:
    """A method's or property's docstring, inherited from a base class when it overrides a
    documented one."""
    return inspect.getdoc(getattr(cls, name)) or ""


def undocumented() -> list[str]:
    """Public modules, objects, methods and properties without a docstring."""
    missing = []
    for module_name, module, objects in api_objects():
        if not doc(module):
            missing.append(module_name)
        for name, obj in objects:
            if not doc(obj):
                missing.append(f"{module_name}.{name}")
            if inspect.isclass(obj):
                missing += [f"{module_name}.{name}.{member}" for member, _ in public_members(obj)
                            if not member_doc(obj, member)]
    return missing


def signature(obj) -> str:
    """The call signature without private parameters (a dataclass's ``_cache`` fields)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    return str(sig.replace(parameters=[p for p in sig.parameters.values()
                                       if not p.name.startswith("_")]))


def doc(obj) -> str:
    """The docstring (a method that overrides a documented one inherits its docstring)."""
    return inspect.getdoc(obj) or ""


def indent(text: str) -> str:
    return "\n".join(("    " + line) if line else "" for line in text.splitlines())


def render() -> str:
    lines = ["# neurosim API reference", "",
             "Generated from the docstrings by `python docs/gen_api.py`; do not edit by hand "
             "(tests/test_api_docs.py checks it is current). Equations are in the docstrings; "
             "guides: docs/tutorial.md, docs/simulation.md, docs/plasticity.md, "
             "docs/protocols.md, docs/cells.md, docs/data.md, docs/pid.md.", ""]
    for module_name, module, objects in api_objects():
        lines += [f"## `{module_name}`", "", indent(doc(module)), ""]
        for name, obj in objects:
            kind = "class" if inspect.isclass(obj) else "def"
            lines += [f"### `{kind} {name}{signature(obj)}`", "", indent(doc(obj)), ""]
            if inspect.isclass(obj):
                for member, value in public_members(obj):
                    head = f"- `{name}.{member}` (property)" if isinstance(value, property) \
                        else f"- `{name}.{member}{signature(value)}`"
                    text = member_doc(obj, member)
                    lines.append(head)
                    if text:
                        lines += ["", indent(indent(text)), ""]
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
