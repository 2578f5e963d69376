"""The `audit` command's AuditConfig options, generated from AuditConfig's fields (as sparsify builds
its CLI from its config dataclasses with simple_parsing).

Each field is one option named after it (``max_sae_fvu`` -> ``--max-sae-fvu``), with the field's
docstring as its ``--help`` and AuditConfig's default as its default, so a new setting reaches the
CLI without a line here. Switches are ``--x/--no-x``; list fields take comma-separated values and
repeat (``--layers 9,15,21``, ``--probes finance --probes my.jsonl``); an optional number whose
default is not None also takes ``none``. The same field -> flag map puts the ConfigError messages
of AuditConfig's validation into CLI terms on the CLI path (``fdr=1.5`` -> ``--fdr 1.5``).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re
import shlex
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Optional, Union

import typer
from rich.markup import escape

from ..config import AuditConfig, field_help
from ..errors import ConfigError

PANEL = "Audit settings (AuditConfig)"

_RENAMED = {"max_prompts_per_set": "--max-prompts"}
"""Flags that are not their field's name (--max-prompts is older than the generated options and the
README and scripts use it)."""


def split_values(values: list[str] | tuple[str, ...] | None) -> list[str] | None:
    """A repeatable option's values, each split at commas: ['9,15', '21'] -> ['9', '15', '21']; None
    when the option was not given."""
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def parse_values(values: list[str] | tuple[str, ...] | None, item: type, flag: str) -> list[Any] | None:
    """:func:`split_values`, each converted to `item` (str, int, float), or a ConfigError naming `flag`."""
    items = split_values(values)
    if items is None or item is str:
        return items
    try:
        return [item(v) for v in items]
    except ValueError:
        what = {int: "integers", float: "numbers"}.get(item, f"{item.__name__} values")
        raise ConfigError(f"{flag} must be {what}, got {items}.", f"Pass e.g. {flag} 9,15,21.") from None


def _or_none(inner: type) -> Callable[[str], Any]:
    """A parser of `inner` (int, float) that also takes 'none' (an optional setting whose default is not None)."""

    def parse(text: Any) -> Any:
        if not isinstance(text, str):  # the default, passed through the parser too
            return text
        if text.strip().lower() == "none":
            return None
        try:
            return inner(text)
        except ValueError:
            raise ValueError(f"{text!r} is neither {'an integer' if inner is int else 'a number'} nor 'none'") from None

    return parse


@dataclasses.dataclass(frozen=True)
class Setting:
    """One AuditConfig field as a CLI option."""

    name: str
    hint: Any
    """The field's type, resolved (list[int] | None, Literal[...], float, ...)."""

    @property
    def flag(self) -> str:
        return _RENAMED.get(self.name, "--" + self.name.replace("_", "-"))

    @property
    def optional(self) -> bool:
        return typing.get_origin(self.hint) in (Union, types.UnionType) and type(None) in typing.get_args(self.hint)

    @property
    def inner(self) -> Any:
        """The type without its `| None`."""
        if not self.optional:
            return self.hint
        rest = [a for a in typing.get_args(self.hint) if a is not type(None)]
        return rest[0] if len(rest) == 1 else Union[tuple(rest)]

    @property
    def item(self) -> type | None:
        """The element type of a list field, else None."""
        return typing.get_args(self.inner)[0] if typing.get_origin(self.inner) is list else None

    @property
    def default(self) -> Any:
        return getattr(AuditConfig(), self.name)  # a fresh copy of a default_factory's list

    def parameter(self) -> inspect.Parameter:
        """The typer option: an inspect.Parameter whose annotation carries a typer.Option."""
        common = dict(help=escape(field_help(AuditConfig, self.name)), rich_help_panel=PANEL)
        if self.item is not None:
            option = typer.Option(self.flag, metavar=f"<{self.item.__name__},...>", **common)
            annotation: Any = Optional[list[str]]
        elif self.inner is bool:
            option, annotation = typer.Option(f"{self.flag}/--no-{self.flag[2:]}", **common), bool
        elif self.optional and self.default is not None:
            name = self.inner.__name__
            option = typer.Option(self.flag, parser=_or_none(self.inner), metavar=f"<{name}|none>", **common)
            annotation = Optional[self.inner]
        else:
            option, annotation = typer.Option(self.flag, **common), self.hint
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=self.default,
                                 annotation=Annotated[annotation, option])

    def value(self, given: Any) -> Any:
        """The field's value from what the option parsed."""
        if self.item is None:
            return given
        values = parse_values(given, self.item, self.flag)
        return self.default if values is None else values

    def as_cli(self, literal: str) -> str:
        """`name=literal` (a Python literal, as a message writes it) in CLI terms."""
        try:
            value = ast.literal_eval(literal)
        except (ValueError, SyntaxError):  # nan, inf
            return f"{self.flag} {literal}"
        if isinstance(value, bool) and self.inner is bool:
            return self.flag if value else f"--no-{self.flag[2:]}"
        if value is None:
            return f"no {self.flag}" if self.item is not None else f"{self.flag} none"
        if isinstance(value, (list, tuple)):
            return f"{self.flag} {','.join(map(_word, value))}"
        return f"{self.flag} {_word(value)}"


def _word(value: Any) -> str:
    if value is Ellipsis:
        return "..."
    return shlex.quote(value) if isinstance(value, str) else str(value)


@functools.cache
def settings() -> tuple[Setting, ...]:
    """AuditConfig's fields, in order, as CLI options."""
    hints = typing.get_type_hints(AuditConfig)
    return tuple(Setting(f.name, hints[f.name]) for f in dataclasses.fields(AuditConfig))


def flags() -> dict[str, str]:
    """AuditConfig field -> its `neuronlens audit` flag."""
    return {s.name: s.flag for s in settings()}


def config_from_options(options: Mapping[str, Any]) -> AuditConfig:
    """The AuditConfig of the generated options' parsed values (keyed by field name)."""
    return AuditConfig(**{s.name: s.value(options[s.name]) for s in settings()})


def with_config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """`command(..., config: AuditConfig, ...)` as a typer command: its `config` parameter becomes one
    option per AuditConfig field, in their own help panel and in its place, and `command` is called
    with the AuditConfig they build. Register the result with ``app.command()``."""
    sig = inspect.signature(command, eval_str=True)
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values() if p.name != "config"]
    generated = [s.parameter() for s in settings()]
    clash = {p.name for p in own} & {p.name for p in generated}
    assert not clash, f"{command.__name__} declares AuditConfig's {sorted(clash)} itself"
    at = list(sig.parameters).index("config")

    def run(**options: Any) -> Any:
        config = config_from_options({s.name: options.pop(s.name) for s in settings()})
        return command(config=config, **options)

    run.__signature__ = inspect.Signature(own[:at] + generated + own[at:])  # type: ignore[attr-defined]
    run.__name__, run.__qualname__, run.__doc__, run.__module__ = (
        command.__name__, command.__qualname__, command.__doc__, command.__module__)
    return run


def cli_terms(text: str) -> str:
    """`text` with AuditConfig's Python terms put as the CLI's: ``fdr=1.5`` -> ``--fdr 1.5``,
    ``positions='last'`` -> ``--positions last``, ``layers=[1, 1]`` -> ``--layers 1,1``,
    ``own_responses=False`` -> ``--no-own-responses``, a bare ``max_sae_fvu`` -> ``--max-sae-fvu``.
    One-word names (fdr, layers) are changed only where a value follows: as words they are prose."""
    by_name = {s.name: s for s in settings()}
    names = "|".join(sorted(by_name, key=len, reverse=True))
    literal = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\[[^\]]*\]|[-+\w.]*\w"
    text = re.sub(rf"(?<![\w.-])({names})=({literal})", lambda m: by_name[m[1]].as_cli(m[2]), text)
    compound = "|".join(sorted((n for n in by_name if "_" in n), key=len, reverse=True))
    return re.sub(rf"(?<![\w.-])({compound})\b", lambda m: by_name[m[1]].flag, text)


def in_cli_terms(exc: ConfigError) -> ConfigError:
    """`exc` with its problem and fix in CLI terms (:func:`cli_terms`), of the same type."""
    return type(exc)(cli_terms(exc.problem), None if exc.fix is None else cli_terms(exc.fix))
