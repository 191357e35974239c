"""Resolve `module`, `module:Class`, `path/to/file.py` and `path/to/file.py:Class` to service classes.

Each way a target can be wrong gets its own precise LoadError; an exception raised by the user's
module while it is imported is not ours to hide, and comes out as TargetImportError with the
user's traceback.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType

from servicefactory.errors import LoadError
from servicefactory.service import ServiceBase

__all__ = ["load", "services_in", "TargetImportError"]


class TargetImportError(LoadError):
    """The target module raised while being imported; carries the user's traceback."""

    exit_code = 1

    def __init__(self, target: str, error: BaseException) -> None:
        super().__init__(f"importing {target!r} raised {type(error).__name__}: {error}")
        frames = traceback.extract_tb(error.__traceback__)
        # drop importlib's own frames: the user needs their code, not ours
        frames = [frame for frame in frames if "importlib" not in frame.filename
                  and not frame.filename.endswith(("servicefactory/supervise/loader.py", "<frozen importlib._bootstrap>"))]
        self.traceback = ("Traceback (most recent call last):\n" + "".join(traceback.format_list(frames))
                          + "".join(traceback.format_exception_only(type(error), error)))


def _import_module(spec: str) -> ModuleType:
    if spec.endswith(".py") or os.sep in spec:
        return _import_path(spec)
    if not spec or not all(part.isidentifier() for part in spec.split(".")):
        raise LoadError(f"{spec!r} is not a module name or a path to a .py file")
    if "" not in sys.path and os.getcwd() not in sys.path:
        # the current directory is importable, but after the standard library: a `selectors.py`
        # planted in a shared working directory must not run in place of the real one
        sys.path.insert(_after_stdlib(), os.getcwd())
    try:
        return importlib.import_module(spec)
    except SystemExit as exc:
        raise LoadError(f"importing {spec!r} called sys.exit({exc.code!r}); services must not exit at import") from None
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if spec == missing or spec.startswith(missing + "."):
            raise LoadError(f"no module named {spec!r} (looked in the current directory and sys.path)") from None
        raise TargetImportError(spec, exc) from None
    except Exception as exc:
        raise TargetImportError(spec, exc) from None


def _after_stdlib() -> int:
    """The sys.path index just after the standard library's entries (the end if none is found)."""
    import sysconfig

    roots = {os.path.realpath(sysconfig.get_paths()[key]) for key in ("stdlib", "platstdlib")}
    position = len(sys.path)
    for index, entry in enumerate(sys.path):
        real = os.path.realpath(entry) if entry else ""
        packages = "site-packages" in real or "dist-packages" in real
        if not packages and (real in roots or any(real.startswith(root + os.sep) for root in roots)
                             or (real.endswith(".zip") and os.path.basename(real).startswith("python"))):
            position = index + 1
    return position


def _import_path(spec: str) -> ModuleType:
    path = Path(spec).expanduser()
    if not path.is_file():
        raise LoadError(f"no such file: {spec}")
    if path.suffix != ".py":
        raise LoadError(f"{spec} is not a .py file")
    path = path.resolve()
    name = path.stem
    if not name.isidentifier():
        raise LoadError(f"{path.name} cannot be imported: {name!r} is not a valid module name")
    existing = sys.modules.get(name)
    if existing is not None and getattr(existing, "__file__", None) and Path(existing.__file__).resolve() == path:
        return existing
    directory = str(path.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)  # so the file's own sibling imports work, as with `python file.py`
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except SystemExit as exc:
        sys.modules.pop(name, None)
        raise LoadError(f"importing {spec!r} called sys.exit({exc.code!r}); services must not exit at import") from None
    except Exception as exc:
        sys.modules.pop(name, None)
        raise TargetImportError(spec, exc) from None
    return module


def services_in(module: ModuleType) -> list[type[ServiceBase]]:
    """The Service subclasses `module` defines itself (not the ones it imports), in definition order."""
    return [value for value in vars(module).values()
            if isinstance(value, type) and issubclass(value, ServiceBase) and value is not ServiceBase
            and value.__module__ == module.__name__]


def load(target: str) -> list[type[ServiceBase]]:
    """The service classes named by `target`; raise LoadError saying precisely what is wrong."""
    if not isinstance(target, str) or not target.strip():
        raise LoadError("empty target: give module, module:Class, file.py or file.py:Class")
    module_spec, colon, class_name = target.partition(":")
    module = _import_module(module_spec)
    defined = services_in(module)
    names = ", ".join(cls.__name__ for cls in defined) or "none"
    if not colon:
        if not defined:
            raise LoadError(f"{module_spec} defines no Service subclasses")
        return defined
    value = module
    for part in class_name.split("."):
        value = getattr(value, part, None)
        if value is None:
            raise LoadError(f"{module_spec} has no {class_name!r} (services it defines: {names})")
    if not (isinstance(value, type) and issubclass(value, ServiceBase)) or value is ServiceBase:
        raise LoadError(f"{module_spec}:{class_name} is not a Service subclass (services it defines: {names})")
    return [value]
