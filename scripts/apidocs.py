#!/usr/bin/env python3
"""Build sockchat's API reference (HTML) with pydoctor, Twisted's own tool.

    .venv/bin/python scripts/apidocs.py             # into build/apidocs/
    .venv/bin/python scripts/apidocs.py --out DIR

Needs the dev extras (``pip install -e '.[dev]'``).  Any pydoctor warning
(a broken cross-reference, a docstring that does not parse) fails the
build, and so does a public name without a docstring: the names in the
``__all__`` of each public module.

Only the public modules are shown (``PUBLIC_MODULES``):

- ``sockchat``: everything a program embeds (``__all__``);
- ``sockchat.testing``: the fakes for testing responders and clients;
- ``sockchat.jsonlog``: its ``observer`` is named by its Python path on
  twistd's command line (``--logger sockchat.jsonlog.observer``), so
  that path is a promise too.

The private packages (``sockchat._core`` and the others) are hidden, and
so are the modules whose interface is a command line, documented in
README.md rather than here: ``sockchat.tap`` (``twistd sockchat``), and
``sockchat.client``, ``sockchat.operator`` and ``sockchat.worker``
(``python -m ...``).  Their names stay importable; their insides may
change like any private module's.

The names that ``sockchat/__init__.py`` re-exports are documented as
``sockchat.NAME``, where users import them from, not under the private
module that defines them.  (pydoctor moves a re-exported name only when
its own module's ``__all__`` does not list it too; ours do.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

try:
    from pydoctor import driver, model
    from pydoctor.options import Options
except ImportError:  # README's first command installs no dev extras
    raise SystemExit(
        "apidocs.py: pydoctor is not installed in this Python; it comes with "
        f"the dev extras: in {ROOT}, .venv/bin/pip install -c constraints.txt "
        "-e '.[dev]' (python3 scripts/check.py does it too)"
    ) from None
PUBLIC_MODULES = ("sockchat", "sockchat.testing", "sockchat.jsonlog")
#: Modules that are not part of the API: their interface is a command line.
COMMAND_LINES = (
    "sockchat.tap",
    "sockchat.client",
    "sockchat.operator",
    "sockchat.worker",
    "sockchat.desk",
)


class SockchatSystem(model.System):
    """pydoctor's system, with sockchat's re-exports moved to the package."""

    def postProcess(self) -> None:
        package = self.allobjects["sockchat"]
        assert isinstance(package, model.Module)
        for name in package.all or ():
            found = _follow(self, package.expandName(name))
            if found is not None and found.parent is not package:
                found.reparent(package, name)
        super().postProcess()


def _follow(system: model.System, full_name: str) -> model.Documentable | None:
    """The object *full_name* names, through modules that re-export it."""
    for _ in range(10):  # a chain of re-exports is short
        found = system.objForFullName(full_name)
        if found is not None:
            return found
        module_name, _, name = full_name.rpartition(".")
        module = system.objForFullName(module_name)
        if module is None:
            return None
        full_name = module.expandName(name)
    return None


def undocumented(system: model.System) -> list[str]:
    """The public names that have no docstring."""
    missing = []
    for module_name in PUBLIC_MODULES:
        module = system.allobjects[module_name]
        assert isinstance(module, model.Module)
        for name in module.all or ():
            ob = module.contents.get(name)
            if ob is None:
                missing.append(f"{module_name}.{name} (not found)")
            elif not ob.docstring:
                missing.append(ob.fullName())
    return missing


def _hidden() -> list[str]:
    """pydoctor's options that hide all but the public modules, and every
    private name (``_x``, not ``__init__``) at any depth: in its patterns,
    ``**`` spans dots and ``*`` does not.  What a hidden package holds is
    hidden with it."""
    patterns = ["**._[!_]*"]
    for name in COMMAND_LINES:
        patterns += [name, f"{name}.*"]
    return [f"--privacy=HIDDEN:{pattern}" for pattern in patterns]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the API reference.")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "apidocs")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from sockchat import __version__

    options = Options.from_args(
        [
            f"--html-output={args.out}",
            "--project-name=sockchat",
            f"--project-version={__version__}",
            "--docformat=restructuredtext",
            "--warnings-as-errors",
            "--quiet",
            *_hidden(),
            str(ROOT / "sockchat"),
        ]
    )
    options.systemclass = SockchatSystem
    system = driver.get_system(options)
    driver.make(system)
    failed = bool(system.violations) or any(system.parse_errors.values())
    for name in undocumented(system):
        print(f"{name}: a public name without a docstring", file=sys.stderr)
        failed = True
    if failed:
        print("the API reference has warnings (above)", file=sys.stderr)
        return 1
    print(f"API reference: {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
