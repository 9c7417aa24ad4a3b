"""Settings declared once, and the command-line flags made from them.

A settings class is a frozen dataclass whose fields are declared with
:func:`setting`: the default, the help text and how a command-line value is
read, in one place. :func:`add_settings` turns a class into flags,
``--field-name`` for ``field_name``, each falling back to the environment
variable ``SCORECAST_FIELD_NAME`` (PROTOCOL.md section 7), and
:func:`settings_from` turns the parsed flags back into the object::

    @dataclass(frozen=True, slots=True)
    class Settings:
        port: int = setting(8080, help="listen port", parse=port)

    add_settings(parser, Settings, os.environ)
    settings = settings_from(Settings, parser.parse_args())

A field whose ``None`` means "no limit" reads ``none`` for it (:func:`unlimited`).
A renamed flag keeps its old spelling (``was=``) as a deprecated alias: it
still works, flag and environment variable alike, and says once on stderr
which flag replaced it. Fields that code sets and people do not are declared
with :func:`internal` and get no flag.

This module imports nothing of scorecast: settings classes of the runtime
(gateway, publishers) declare their fields with it, and the command line
builds its parsers from them. Usage errors are one line and exit 2
(:class:`Parser`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

__all__ = [
    "LOG_LEVELS",
    "Flag",
    "Parser",
    "above",
    "add_settings",
    "amount",
    "at_least",
    "count",
    "csv",
    "env_flag",
    "flag_of",
    "internal",
    "log_level",
    "port",
    "positive",
    "readable_file",
    "seconds",
    "setting",
    "settings_from",
    "shown",
    "unlimited",
    "variable_for",
]

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
NO_LIMIT = "none"  # the one spelling of "no limit" on the command line
_KEY = "scorecast.flag"  # the dataclass field metadata key


@dataclasses.dataclass(frozen=True, slots=True)
class Flag:
    """How one settings field appears on the command line."""

    help: str
    parse: Callable[[str], Any] = str
    name: str | None = None  # default: --field-name
    shown: str | None = None  # the default as --help shows it, when not the value
    was: str | None = None  # the flag's former spelling, kept as a deprecated alias


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    parse: Callable[[str], Any] = str,
    factory: Callable[[], Any] | None = None,
    flag: str | None = None,
    shown: str | None = None,
    was: str | None = None,
) -> Any:
    """A settings field with its flag: the default (or a ``factory`` making
    it), the help line, and the function that reads a command-line value."""
    metadata = {_KEY: Flag(help=help, parse=parse, name=flag, shown=shown, was=was)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def internal(default: Any = None) -> Any:
    """A field set by code (a supervisor, a test), never by a flag."""
    return dataclasses.field(default=default, metadata={_KEY: None})


def flag_of(field: dataclasses.Field) -> str | None:
    """The flag of a settings field; None for an internal one."""
    meta = field.metadata.get(_KEY)
    if meta is None:
        return None
    return meta.name or "--" + field.name.replace("_", "-")


def variable_for(flag: str) -> str:
    return "SCORECAST_" + flag.lstrip("-").upper().replace("-", "_")


def shown(value: Any) -> str:
    """A default as --help shows it: lists comma-separated, None as ``none``."""
    if value is None:
        return NO_LIMIT
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "(none)"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else str(value)
    return str(value)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr, exit 2,
    and whose commands say which deprecated variables they were given."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deprecations: list[str] = []  # from the environment, said if this command runs
        self.register("action", "parsers", _Commands)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


class _Commands(argparse._SubParsersAction):
    """Subcommands; the one chosen says its environment's deprecations."""

    def __call__(self, parser, namespace, values, option_string=None):
        chosen = self._name_parser_map.get(values[0]) if values else None
        for line in getattr(chosen, "deprecations", ()):
            print(f"{getattr(chosen, 'prog', '')}: {line}", file=sys.stderr)
        super().__call__(parser, namespace, values, option_string)


class _Store(argparse.Action):
    """Stores the value; given the deprecated spelling, says what replaced it."""

    def __init__(self, *args: Any, replaced_by: str, old: str | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.replaced_by, self.old = replaced_by, old

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string is not None and option_string == self.old:
            print(
                f"{parser.prog}: {self.old} is deprecated; use {self.replaced_by}",
                file=sys.stderr,
            )
        setattr(namespace, self.dest, values)


def add_settings(
    parser: argparse.ArgumentParser,
    cls: type,
    environ: Mapping[str, str],
) -> None:
    """A flag for every field of the settings class ``cls`` but internal
    ones, in declaration order."""
    for field in dataclasses.fields(cls):
        meta: Flag | None = field.metadata.get(_KEY)
        name = flag_of(field)
        if meta is None or name is None:
            continue
        if field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = field.default
        _add(parser, environ, name, field.name, default, meta, meta.shown)


def _add(
    parser: argparse.ArgumentParser,
    environ: Mapping[str, str],
    flag: str,
    dest: str,
    default: Any,
    meta: Flag,
    display: str | None,
) -> None:
    variable = variable_for(flag)
    value = _from_environment(parser, environ, variable, meta.parse, default)
    note = ""
    if meta.was is not None:
        old = variable_for(meta.was)
        if old in environ:
            if isinstance(parser, Parser):
                parser.deprecations.append(f"{old} is deprecated; use {variable}")
            if variable not in environ:
                value = _from_environment(parser, environ, old, meta.parse, default)
        note = f"; {meta.was}: deprecated spelling"
    names = [flag] if meta.was is None else [flag, meta.was]
    text = meta.help
    if getattr(meta.parse, "no_limit", False) and f"{NO_LIMIT}:" not in text:
        text += f" ({NO_LIMIT}: no limit)"
    parser.add_argument(
        *names,
        dest=dest,
        default=value,
        type=meta.parse,
        action=_Store,
        replaced_by=flag,
        old=meta.was,
        metavar=dest.upper(),
        help=f"{text} [{variable}, default: {display or shown(default)}{note}]",
    )


def _from_environment(
    parser: argparse.ArgumentParser,
    environ: Mapping[str, str],
    variable: str,
    parse: Callable[[str], Any],
    default: Any,
) -> Any:
    """The variable's value read like the flag's; a bad one is a usage error naming it."""
    raw = environ.get(variable)
    if raw is None:
        return default
    try:
        return parse(raw)
    except (ValueError, argparse.ArgumentTypeError) as error:
        parser.error(f"{variable}={raw!r}: {error}")


def settings_from(cls: type, args: argparse.Namespace, **given: Any) -> Any:
    """The ``cls`` object of the parsed flags; ``given`` fills fields the
    command does not take (or overrides them)."""
    names = {field.name for field in dataclasses.fields(cls)}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return cls(**(values | given))


def env_flag(
    parser: argparse.ArgumentParser,
    environ: Mapping[str, str],
    flag: str,
    default: Any = None,
    kind: Callable[[str], Any] = str,
    help: str = "",
) -> None:
    """One flag not backed by a settings class (the load tools' own)."""
    meta = Flag(help=help, parse=kind)
    _add(parser, environ, flag, flag.lstrip("-").replace("-", "_"), default, meta, None)


# --- how values are read --------------------------------------------------------


def csv(text: str) -> tuple[str, ...]:
    """A comma-separated list, blanks dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def port(text: str) -> int:
    """A TCP port, 0 to 65535 (0: a free one where a command allows it)."""
    value = _integer(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0 to 65535)")
    return value


def at_least(minimum: float, kind: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """A number no smaller than ``minimum``: ``at_least(1)`` for a count that
    must be positive, ``at_least(0.0, float)`` for a duration."""

    def parse(text: str) -> Any:
        value = _integer(text) if kind is int else _number(text)
        if value < minimum or value != value:  # NaN is no number of seconds
            raise argparse.ArgumentTypeError(f"{text}: must be at least {minimum}")
        return value

    parse.__name__ = "integer" if kind is int else "number"
    return parse


def above(minimum: float) -> Callable[[str], float]:
    """A number greater than ``minimum`` (seconds or a rate that cannot be 0)."""

    def parse(text: str) -> float:
        value = _number(text)
        if not value > minimum:
            raise argparse.ArgumentTypeError(f"{text}: must be more than {minimum:g}")
        return value

    parse.__name__ = "number"
    return parse


def unlimited(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse``, or ``none`` for a setting whose None means no limit. ``0``
    is read as ``none`` too: these limits are counts, sizes and rates that
    cannot be zero, and ``0`` is what such flags took before."""

    def read(text: str) -> Any:
        if text.strip().lower() in (NO_LIMIT, "0", ""):
            return None
        try:
            return parse(text)
        except (ValueError, argparse.ArgumentTypeError) as error:
            raise argparse.ArgumentTypeError(f"{error} (or {NO_LIMIT}: no limit)") from None

    read.__name__ = getattr(parse, "__name__", "value")
    read.no_limit = True  # type: ignore[attr-defined]  # --help says how to spell it
    return read


def readable_file(text: str) -> str:
    """A file that exists and can be read (a key, a credentials file)."""
    try:
        with open(text, "rb"):
            return text
    except OSError as error:
        raise argparse.ArgumentTypeError(f"{text}: {error.strerror}") from None


def log_level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return text.lower()


count = at_least(1)  # how many: at least one
amount = at_least(0)  # a whole amount that may be zero (bytes, a count)
positive = above(0)  # seconds or a rate that must be above zero
seconds = at_least(0.0, float)  # seconds, zero allowed


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
