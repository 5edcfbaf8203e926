"""``ravn quantize``'s method options, generated from the registered methods' config fields.

Every field of every registered config, and of the configs nested in them (``search``,
``finetune``), is one flag: ``--field-name``, its help text the field's ``#:`` comment, prefixed by
the methods it applies to. A new field is a new flag; ``cli.py`` is not edited. A field's
``metadata={"flag": "--on/--off"}`` names a boolean switch; ``metadata={"cli": False}`` keeps a
field (plain data such as per-layer overrides) off the command line.

A flag applies to a method when its config has the field and, for a nested config's field, when
the method's preset runs that step: fine-tuning flags need ``--mode qat`` (or a method that
fine-tunes by default), search flags a method that searches. Anything else is a one-line error.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.markup import escape

from ravn.config import field_docs, nested_config_type
from ravn.errors import RavnError
from ravn.methods.base import METHODS, MethodSpec

#: What ``--mode`` switches: the nested config a method's ``finetune`` field holds.
MODES = ("ptq", "qat")


@dataclass
class Flag:
    name: str  # the field's name
    kind: type  # bool, int, float, str, or list (repeatable str)
    doc: str
    nested: str | None  # the nested config field it belongs to, if any
    decl: str  # typer option declaration
    methods: list[str] = dataclasses.field(default_factory=list)


def _scalar(hint: Any) -> type:
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)  # X | None: X
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    if typing.get_origin(base) is tuple:
        return list
    return base if base in (bool, int, float, str) else str


def _fields(config_type: type, nested: str | None = None):
    hints = typing.get_type_hints(config_type)
    docs = field_docs(config_type)
    for f in dataclasses.fields(config_type):
        if not f.metadata.get("cli", True):
            continue
        inner = nested_config_type(hints[f.name])
        if inner is not None and nested is None:
            yield from _fields(inner, f.name)
            continue
        kind = _scalar(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        decl = f.metadata.get("flag", f"{flag}/--no-{f.name.replace('_', '-')}" if kind is bool else flag)
        yield Flag(f.name, kind, docs.get(f.name, ""), nested, decl)


def _applies(preset, flag: Flag) -> bool:
    """Does ``flag`` apply to a method whose default config is ``preset`` (``--mode qat`` adds fine-tuning)."""
    if flag.nested is None or flag.nested == "finetune":
        return True
    return preset.__dict__.get(flag.nested) is not None


def flags() -> dict[str, Flag]:
    """Every method option by field name, with the methods it applies to."""
    table: dict[str, Flag] = {}
    for spec in METHODS.values():
        preset = spec.config()
        for flag in _fields(spec.config_type):
            known = table.setdefault(flag.name, flag)
            if (known.kind, known.nested) != (flag.kind, flag.nested):
                raise TypeError(f"config field {flag.name} means two things; rename one")
            if _applies(preset, flag):
                known.methods.append(spec.name)
    return table


def command(fn, fixed: dict[str, Any], defaults: dict[str, Any]):
    """``fn`` with a signature typer reads: the fixed options, then one option per method flag."""
    params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=hint, default=defaults[name])
              for name, hint in fixed.items()]
    for flag in flags().values():
        kind = list[str] | None if flag.kind is list else flag.kind | None
        flag_name = flag.decl.split("/")[0]
        repeat = f" Repeatable: {flag_name} A {flag_name} B." if flag.kind is list else ""
        help_text = escape(f"{'/'.join(flag.methods)}: {flag.doc}{repeat}")
        option = typer.Option(*flag.decl.split(" "), help=help_text)
        params.append(inspect.Parameter(flag.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[kind, option]))

    def quantize_cmd(**kwargs):
        fn(**kwargs)

    quantize_cmd.__doc__ = fn.__doc__
    quantize_cmd.__signature__ = inspect.Signature(params)
    quantize_cmd.__annotations__ = {p.name: p.annotation for p in params}
    return quantize_cmd


def config(spec: MethodSpec, mode: str | None, options: dict[str, Any]):
    """The config of method ``spec`` from the flags given (``None``: not given); misfits are one-line errors."""
    table = flags()
    given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in options.items() if v is not None}
    misfits = sorted(k for k in given if spec.name not in table[k].methods)
    if misfits:
        names = ", ".join("--" + k.replace("_", "-") for k in misfits)
        raise RavnError(f"{names} does not apply to --method {spec.name}", "see 'ravn quantize --help'")
    top = {k: v for k, v in given.items() if table[k].nested is None}
    base = spec.config()
    if mode is not None:
        if mode not in MODES:
            raise RavnError(f"unknown mode '{mode}'", "use --mode ptq or --mode qat")
        if "finetune" not in base.__dict__:
            raise RavnError(f"--mode does not apply to --method {spec.name}", "see 'ravn quantize --help'")
        if mode == "ptq":
            top["finetune"] = None
        else:
            from ravn.training.finetune import FineTuneConfig

            top["finetune"] = base.finetune or FineTuneConfig()
    nested: dict[str, dict] = {}
    for k, v in given.items():
        if table[k].nested is not None:
            nested.setdefault(table[k].nested, {})[k] = v
    for key, values in nested.items():
        current = top.get(key, base.__dict__[key])
        if current is None:
            names = ", ".join("--" + k.replace("_", "-") for k in values)
            raise RavnError(f"{names} apply only with --mode qat", "add --mode qat")
        try:
            top[key] = current.replace(**values)
        except (TypeError, ValueError) as exc:
            raise RavnError(str(exc), "see 'ravn quantize --help'") from None
    if "budget_bytes" in top:
        top.setdefault("budget_bits", None)
    return spec.config(**top)
