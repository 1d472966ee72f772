"""Loading a responder named ``package.module:name`` from the command line.

``twistd sockchat --responder`` and ``python -m sockchat.worker`` take the
same references; each shell says a ``ResponderNotLoaded`` in its own words
(``sockchat: --responder REF: ...``, ``sockchat.worker: REF: ...``).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys

from sockchat._responders.contract import IResponder, as_responder

__all__ = ["ResponderNotLoaded", "load_responder"]


class ResponderNotLoaded(Exception):
    """A reference that gives no responder; ``str()`` is one line that names
    the reference and says what went wrong."""

    def __init__(self, reference: str, problem: str) -> None:
        super().__init__(f"{reference}: {problem}")
        #: The reference as given, e.g. ``mybots.faq:FaqBot``.
        self.reference = reference
        #: What went wrong, e.g. ``there is no module named 'mybots'``.
        self.problem = problem


def load_responder(reference: str) -> IResponder:
    """Import ``package.module:name`` and make a responder of it.

    The module is looked up on ``sys.path`` and in the current directory,
    as ``python -m`` would.  Every way this can fail is a
    ``ResponderNotLoaded``.
    """
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ResponderNotLoaded(reference, "give it as package.module:name")
    here = os.getcwd()
    if here not in sys.path:
        sys.path.append(here)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            raise ResponderNotLoaded(
                reference,
                f"there is no module named {missing!r} (is it installed, or in "
                "the current directory?)",
            ) from None
        raise ResponderNotLoaded(
            reference, f"importing {module_name} failed: {e}"
        ) from None
    except Exception as e:
        raise ResponderNotLoaded(
            reference, f"importing {module_name} failed: {type(e).__name__}: {e}"
        ) from None
    try:
        thing = functools.reduce(getattr, attribute.split("."), module)
    except AttributeError:
        raise ResponderNotLoaded(
            reference, f"module {module_name} has no {attribute!r}"
        ) from None
    try:
        return as_responder(thing)
    except TypeError as e:
        raise ResponderNotLoaded(reference, str(e)) from None
    except Exception as e:  # the factory failed
        raise ResponderNotLoaded(
            reference, f"making the responder failed: {type(e).__name__}: {e}"
        ) from None
