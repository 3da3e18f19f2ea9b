"""Finding a plugin strategy by its spec, and checking its parameter values.

A spec is one of:

- ``FILE.py:Class`` (or ``FILE.py`` when the file defines exactly one ``Strategy``): the file
  is run as a module of its own (its directory importable while it loads, no ``__pycache__``
  written next to it);
- ``package.module:Class``: imported from ``sys.path``;
- ``NAME``: an installed strategy, the entry point ``NAME`` of the group
  ``quantum_trader.strategies`` (``[project.entry-points."quantum_trader.strategies"]`` in
  the package's pyproject.toml).

Every failure is a ``StrategyLoadError`` (a ``ValueError``, so the CLI prints one line and
exits 2) that starts with the input it is about: the spec's origin (``--strategy`` or
``strategy.path``) or a parameter's (``--param fast=abc`` or ``strategy.params.fast``).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType

from quantum_trader.domain.strategy import ParamError, ParamValue, resolve_params
from quantum_trader.strategies.adapter import StrategyError, StrategySource, describe_params
from quantum_trader.strategies.api import Strategy

ENTRY_POINT_GROUP = "quantum_trader.strategies"


class StrategyLoadError(ValueError):
    """A strategy that cannot be found, imported or made with the given parameters."""


@dataclass(frozen=True)
class LoadedStrategy:
    cls: type[Strategy]
    params: Mapping[str, ParamValue]  # every parameter, checked
    spec: str
    where: str  # the file, module or installed distribution it came from

    def source(self, signal_ttl_ms: int) -> StrategySource:
        """A fresh source: no bars seen yet."""
        return StrategySource(self.cls, self.params, signal_ttl_ms)

    def describe(self) -> str:
        return f"{self.cls.name}({describe_params(self.params)}) from {self.where}"


def installed_strategies() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_strategy(spec: str, params: Mapping[str, object] | None = None, *,
                  origin: str = "strategy.path",
                  param_origin: Callable[[str], str] | None = None) -> LoadedStrategy:
    """The strategy ``spec`` names, with ``params`` checked against what it declares.

    ``origin`` and ``param_origin(name)`` say where the spec and each value came from, for
    the error messages."""
    where_param = param_origin or (lambda name: f"strategy.params.{name}")
    spec = spec.strip()
    if not spec:
        raise StrategyLoadError(f"{origin}: empty; give FILE.py[:Class], "
                                "package.module:Class or an installed strategy's name")
    cls, where = _find(spec, origin)
    given = dict(params or {})
    for name in given:
        if name not in cls.parameters:
            raise StrategyLoadError(f"{where_param(name)}: {cls.name} has no parameter "
                                    f"{name!r}{_close(name, list(cls.parameters))}")
    try:
        values = resolve_params(cls.parameters, given)
    except ParamError as exc:
        raise StrategyLoadError(f"{where_param(exc.name)}: {exc.problem}") from None
    try:
        StrategySource(cls, values, 1)  # one instance, as a run makes them: setup, warmup
    except StrategyError as exc:
        raise StrategyLoadError(f"{origin} {spec}: {exc}") from None
    except Exception as exc:  # setup() refusing a combination of values, or a bug in it
        raise StrategyLoadError(f"{origin} {spec}: {cls.name}({describe_params(values)}) "
                                f"could not be made: {_one_line(exc)}") from None
    return LoadedStrategy(cls, values, spec, where)


def _close(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (its parameters: {', '.join(choices)})" if choices else " (it has none)"


def _find(spec: str, origin: str) -> tuple[type[Strategy], str]:
    target, colon, attr = spec.rpartition(":")
    if not colon:
        target, attr = spec, ""
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    if is_file:
        module, where = _import_file(Path(target).expanduser(), spec, origin), target
    elif colon:
        module, where = _import_module(target, spec, origin), target
    else:
        return _installed(spec, origin)
    return _pick(module, attr, spec, origin, where), where


def _import_file(path: Path, spec: str, origin: str) -> ModuleType:
    if not path.is_file():
        why = "is a directory" if path.is_dir() else "no such file"
        named = "" if spec.endswith(".py") else f" {path}:"  # the spec names the file
        raise StrategyLoadError(f"{origin} {spec}:{named} {why}")
    full = path.resolve()
    digest = hashlib.blake2b(str(full).encode(), digest_size=4).hexdigest()
    name = f"quantum_trader_strategy_{full.stem}_{digest}"
    loader_spec = importlib.util.spec_from_file_location(name, full)
    if loader_spec is None or loader_spec.loader is None:
        raise StrategyLoadError(f"{origin} {spec}: {path}: not a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # dataclasses and typing look their module up there
    folder = str(full.parent)
    writes_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # loading a strategy leaves nothing beside it
    sys.path.insert(0, folder)  # so it can import helper modules next to it
    try:
        loader_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        raise StrategyLoadError(f"{origin} {spec}: importing {path} failed: "
                                f"{_one_line(exc)}") from None
    finally:
        sys.dont_write_bytecode = writes_bytecode
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def _import_module(target: str, spec: str, origin: str) -> ModuleType:
    writes_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (target + ".").startswith(exc.name + "."):
            raise StrategyLoadError(f"{origin} {spec}: no module {exc.name} (a file is "
                                    f"FILE.py:Class; a module must be on the Python path)"
                                    ) from None
        raise StrategyLoadError(f"{origin} {spec}: importing {target} failed: "
                                f"{_one_line(exc)}") from None
    except (Exception, SystemExit) as exc:
        raise StrategyLoadError(f"{origin} {spec}: importing {target} failed: "
                                f"{_one_line(exc)}") from None
    finally:
        sys.dont_write_bytecode = writes_bytecode


def _installed(name: str, origin: str) -> tuple[type[Strategy], str]:
    found = installed_strategies()
    ep = found.get(name)
    if ep is None:
        known = ", ".join(sorted(found)) or "none are installed"
        raise StrategyLoadError(
            f"{origin} {name}: no installed strategy of that name (installed: {known}); a "
            "file is FILE.py[:Class], a module package.module:Class")
    where = f"{ep.value} ({ep.dist.name if ep.dist is not None else 'installed'})"
    try:
        obj = ep.load()
    except (Exception, SystemExit) as exc:
        raise StrategyLoadError(f"{origin} {name}: loading {ep.value} failed: "
                                f"{_one_line(exc)}") from None
    if not (isinstance(obj, type) and issubclass(obj, Strategy)):
        raise StrategyLoadError(f"{origin} {name}: {ep.value} is not a Strategy subclass "
                                "(quantum_trader.strategies.Strategy)")
    return obj, where


def _pick(module: ModuleType, attr: str, spec: str, origin: str,
          where: str) -> type[Strategy]:
    defined = [v for v in vars(module).values() if isinstance(v, type)
               and issubclass(v, Strategy) and v is not Strategy
               and v.__module__ == module.__name__]
    names = ", ".join(c.__name__ for c in defined) or "none"
    if not attr:
        if len(defined) != 1:
            raise StrategyLoadError(f"{origin} {spec}: say which class, {spec}:Class "
                                    f"(strategies in {where}: {names})")
        return defined[0]
    obj: object = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise StrategyLoadError(f"{origin} {spec}: {where} has no {attr} (strategies in "
                                    f"it: {names})")
    if not (isinstance(obj, type) and issubclass(obj, Strategy)):
        raise StrategyLoadError(f"{origin} {spec}: {attr} is not a Strategy subclass "
                                "(quantum_trader.strategies.Strategy)")
    return obj


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
