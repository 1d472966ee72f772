"""The house's plan: subsystems as folders, imports that run one way.

- the core imports no Twisted, no sockets and no other subsystem;
- no module imports a name another module keeps private (``_name``), and
  no two modules import each other, directly or in a longer loop;
- README's Layout section has a line for every folder of the package, and
  names only folders and modules that exist.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sockchat"

#: What the core may import besides itself and the standard library.
CORE_MAY_IMPORT = {"attrs", "zope", "wcwidth"}
#: What the core never imports, even from the standard library: I/O.
NO_IO = {"socket", "select", "selectors", "asyncio", "subprocess", "os", "io"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            yield base, [alias.name for alias in node.names], node.lineno


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_the_core_imports_no_twisted_no_io_and_no_other_subsystem():
    found = []
    for name, path in modules().items():
        if not name.startswith("sockchat._core"):
            continue
        for module, _, line in imports(name, path):
            top = module.split(".")[0]
            if module.startswith("sockchat."):
                if not module.startswith("sockchat._core"):
                    found.append(f"{name}:{line} imports {module}")
            elif top == "sockchat" or top == "__future__":
                continue
            elif top in NO_IO or top == "twisted":
                found.append(f"{name}:{line} imports {module}")
            elif top not in CORE_MAY_IMPORT and not _stdlib(top):
                found.append(f"{name}:{line} imports {module}, not in the core's list")
    assert found == []


#: Teaching mode's modules that, like the core, do no I/O: its words, the
#: packet parser, the kernel filter, the pcap format, the ladder, the layers,
#: what a connection's packets showed.
TEACHING_SANS_IO = {
    f"sockchat._teaching.{name}"
    for name in ("trace", "packets", "bpf", "pcap", "ladder", "layers", "followed")
}


def test_teachings_sans_io_modules_import_no_twisted_and_no_io():
    names = modules()
    assert sorted(TEACHING_SANS_IO - set(names)) == []
    found = []
    for name in sorted(TEACHING_SANS_IO):
        for module, _, line in imports(name, names[name]):
            top = module.split(".")[0]
            if top in NO_IO or top in ("twisted", "ctypes", "fcntl"):
                found.append(f"{name}:{line} imports {module}")
            elif top == "sockchat" and not (
                module in TEACHING_SANS_IO or module.startswith("sockchat._core.")
            ):
                found.append(f"{name}:{line} imports {module}, which may do I/O")
    assert found == []


def _stdlib(top: str) -> bool:
    import sys

    return top in sys.stdlib_module_names


def test_no_module_imports_a_private_name_of_another():
    found = []
    names = modules()
    for name, path in names.items():
        for module, taken, line in imports(name, path):
            if not module.startswith("sockchat"):
                continue
            last = module.split(".")[-1]
            if is_private(last) and module not in names:
                found.append(f"{name}:{line} imports the private module {module}")
            for taken_name in taken:
                if is_private(taken_name) and f"{module}.{taken_name}" not in names:
                    found.append(f"{name}:{line} imports {module}.{taken_name}")
    assert found == []


def test_no_two_modules_import_each_other():
    names = modules()
    graph: dict[str, set[str]] = {name: set() for name in names}
    for name, path in names.items():
        for module, taken, _ in imports(name, path):
            for target in [module, *(f"{module}.{t}" for t in taken)]:
                if target in names and target != name and not _package_of(target, name):
                    graph[name].add(target)
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


def _package_of(target: str, name: str) -> bool:
    """Whether *target* is a package that contains *name* (its __init__ runs
    first anyway, and re-exports are not a loop)."""
    return name.startswith(target + ".")


def layout_section() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^## Layout\n(.*?)(?=^## )", readme, re.DOTALL | re.MULTILINE)
    assert match, "README.md has no '## Layout' section"
    return match.group(1)


def test_readme_layout_names_every_folder_and_only_those():
    """Every package, and the folder of the web page's files."""
    section = layout_section()
    folders = {
        "sockchat/" + path.relative_to(PACKAGE).as_posix() + "/"
        for path in PACKAGE.rglob("*")
        if path.is_dir() and path.name != "__pycache__"
    }
    named = set(re.findall(r"`(sockchat/[\w/]+/)`", section))
    assert sorted(folders - named) == [], "folders missing from README's Layout"
    assert sorted(named - folders) == [], "README's Layout names folders that are gone"


def test_readme_layout_names_only_modules_that_exist():
    section = layout_section()
    named = set(re.findall(r"`(sockchat/[\w/]+\.py)`", section))
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert missing == []
