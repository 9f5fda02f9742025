"""Griffe extension for the API pages: constructor signatures of equinox modules.

Equinox modules are dataclasses created by a metaclass, which griffe's static
analysis cannot see, so their pages would show no `Class(...)` signature.
For every class of the package that has no `__init__` in the source but is a
dataclass at run time, this adds an `__init__` whose parameters are the
dataclass fields, with annotations and defaults taken from the source
(`eqx.field(..., default=...)` included). Docstrings are untouched. Anything
unexpected leaves the class as it was: it never logs a warning, so it cannot
break `mkdocs build --strict`.

Loaded from mkdocs.yml (`extensions:` of the mkdocstrings python handler).
"""

import dataclasses
import importlib
from typing import Any

import griffe


def _static_attribute(cls: griffe.Class, name: str) -> griffe.Attribute | None:
    """The source-level attribute `name` of `cls` or of a base class in the package."""
    try:
        classes = [cls, *cls.mro()]
    except Exception:  # unresolvable external bases
        classes = [cls]
    for klass in classes:
        member = klass.members.get(name)
        if member is not None and not member.is_alias and member.is_attribute:
            return member
    return None


def _default(attribute: griffe.Attribute | None, field: dataclasses.Field) -> str | griffe.Expr:
    value = None if attribute is None else attribute.value
    if isinstance(value, griffe.ExprCall) and str(value.function).split(".")[-1] == "field":
        for argument in value.arguments:
            if isinstance(argument, griffe.ExprKeyword) and argument.name == "default":
                return argument.value
            if isinstance(argument, griffe.ExprKeyword) and argument.name == "default_factory":
                return f"{argument.value}()"
    elif value is not None:
        return value
    if field.default is not dataclasses.MISSING:
        return repr(field.default)
    return "..."


def _add_init(cls: griffe.Class, live: Any) -> None:
    if "__init__" in cls.members or not dataclasses.is_dataclass(live):
        return
    positional = griffe.ParameterKind.positional_or_keyword
    parameters = [griffe.Parameter("self", kind=positional)]
    for field in dataclasses.fields(live):
        if not field.init:
            continue
        attribute = _static_attribute(cls, field.name)
        has_default = (
            field.default is not dataclasses.MISSING
            or field.default_factory is not dataclasses.MISSING
        )
        parameters.append(
            griffe.Parameter(
                field.name,
                annotation=None if attribute is None else attribute.annotation,
                kind=griffe.ParameterKind.keyword_only if field.kw_only else positional,
                default=_default(attribute, field) if has_default else None,
            )
        )
    init = griffe.Function(
        "__init__",
        lineno=0,
        endlineno=0,
        parent=cls,
        parameters=griffe.Parameters(*parameters),
        returns="None",
    )
    cls.set_member("__init__", init)


def _walk(obj: griffe.Module | griffe.Class, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    for member in list(obj.members.values()):
        if member.is_alias:
            continue
        if member.is_class and isinstance(obj, griffe.Module):
            try:
                live = getattr(importlib.import_module(obj.path), member.name, None)
                _add_init(member, live)
            except Exception as error:  # keep the class as it is
                griffe.logger.debug("griffe_equinox: skipped %s: %s", member.path, error)
        if member.is_module:
            _walk(member, seen)


class EquinoxModules(griffe.Extension):
    """Give equinox modules (runtime dataclasses) their `__init__` signature."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        try:
            importlib.import_module(pkg.path)
        except Exception as error:
            griffe.logger.debug("griffe_equinox: cannot import %s: %s", pkg.path, error)
            return
        _walk(pkg, set())
