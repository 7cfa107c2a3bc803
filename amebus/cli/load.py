"""What every ``amebus`` command starts from: the service a ``module.path:Name`` argument
names, and the one-sentence CommandError a command exits with.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
import typing
from pathlib import Path
from typing import Any

from amebus.errors import AmebusError
from amebus.service import Service

__all__ = ["RUNTIME", "USAGE", "CommandError", "load_object", "load_service", "say",
           "service_class"]

USAGE, RUNTIME = 2, 1


class CommandError(Exception):
    """A user error: printed as one sentence, then the command exits with ``code``."""

    def __init__(self, message: str, code: int = RUNTIME) -> None:
        super().__init__(message)
        self.code = code


def say(message: str) -> None:
    """Print one line for the user on stderr, prefixed ``amebus:``.

    When stderr's reader is gone (a closed pipe, a hung-up terminal), stderr is pointed at
    /dev/null from then on: a failed write must never stop the command from shutting down."""
    try:
        print(f"amebus: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        with contextlib.suppress(OSError, ValueError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, sys.stderr.fileno())
            os.close(null)


def load_object(target: str) -> object:
    """Import ``module.path:Name`` (or ``path/to/file.py:Name``) and return ``Name``."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        msg = (f"{target!r} is not a service reference; write module.path:ServiceClass, "
               f"e.g. myapp.orders:OrderService")
        raise CommandError(msg, USAGE)
    module = _import(module_name)
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            found = [n for n, v in vars(module).items()
                     if isinstance(v, type) and issubclass(v, Service) and v is not Service]
            hint = f"; it defines {', '.join(found)}" if found else ""
            msg = f"module {module_name!r} has no attribute {attr!r}{hint}"
            raise CommandError(msg, USAGE) from None
    return obj


def _import(name: str) -> Any:
    sys.path.insert(0, os.getcwd())  # as `python -m` does: modules of the current folder
    try:
        if name.endswith(".py") or os.sep in name:
            path = Path(name)
            if not path.is_file():
                msg = f"cannot import {name!r}: no such file"
                raise CommandError(msg, USAGE)
            sys.path.insert(0, str(path.parent.resolve()))  # as running the file would
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                msg = f"cannot import {name!r}: not a Python file"
                raise CommandError(msg, USAGE)
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module  # attrs and cattrs resolve annotations through it
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            msg = (f"cannot import {name!r}: no module named {exc.name!r} (run amebus from the "
                   f"folder that holds it, or install it)")
            raise CommandError(msg, USAGE) from None
        msg = f"importing {name!r} failed: {exc}"
        raise CommandError(msg, USAGE) from None
    except AmebusError as exc:
        msg = f"importing {name!r} failed: {type(exc).__name__}: {exc}"
        raise CommandError(msg, USAGE) from None
    except CommandError:
        raise
    except Exception as exc:  # a bug in the user's module: its traceback helps
        traceback.print_exc()
        msg = f"importing {name!r} failed: {type(exc).__name__}: {exc} (traceback above)"
        raise CommandError(msg, USAGE) from None


def load_service(target: str) -> Service:
    """The service instance ``target`` names: a Service subclass (called with no arguments),
    an instance, or a function returning one."""
    return _instantiate(load_object(target), target)


def _instantiate(obj: object, target: str) -> Service:
    if isinstance(obj, Service):
        return obj
    if obj is Service:
        msg = f"{target!r} is amebus.Service itself; name your subclass of it"
        raise CommandError(msg, USAGE)
    is_class = isinstance(obj, type) and issubclass(obj, Service)
    if not callable(obj) or (isinstance(obj, type) and not is_class):
        msg = (f"{target!r} is {_kind(obj)}, not a Service subclass; point at a class "
               f"declared as `class MyService(amebus.Service)`")
        raise CommandError(msg, USAGE)
    try:
        inspect.signature(obj).bind()
    except TypeError as exc:
        what = "a Service that takes arguments" if is_class else "a function that takes arguments"
        msg = (f"{target!r} is {what} ({exc}); point at a module-level instance or a function "
               f"that builds one, e.g. module:make_service")
        raise CommandError(msg, USAGE) from None
    except ValueError:  # no signature to read: just call it
        pass
    try:
        made = obj()
    except Exception as exc:  # a bug in the user's constructor: its traceback helps
        traceback.print_exc()
        msg = f"{target}() failed: {type(exc).__name__}: {exc} (traceback above)"
        raise CommandError(msg) from None
    if not isinstance(made, Service):
        msg = f"{target!r} returned {_kind(made)}, not a Service instance"
        raise CommandError(msg, USAGE)
    return made


def _kind(obj: object) -> str:
    if isinstance(obj, type):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    return f"{obj!r:.60} (of type {type(obj).__name__})"


def service_class(target: str) -> type[Service]:
    """The class ``target`` names, without building an instance where that can be avoided
    (a factory function is read from its return annotation, called only without one)."""
    obj = load_object(target)
    if isinstance(obj, Service):
        return type(obj)
    if inspect.isfunction(obj):
        with contextlib.suppress(Exception):
            returns = typing.get_type_hints(obj).get("return")
            if isinstance(returns, type) and issubclass(returns, Service) and returns.routes:
                return returns
    if isinstance(obj, type) and issubclass(obj, Service) and obj is not Service:
        return obj
    return type(_instantiate(obj, target))
