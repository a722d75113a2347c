"""One config system: YAML presets loaded into typed dataclasses, with ``key=value`` overrides,
and one command-line front door (``parse_cli``) and one error path (``fail``) for every command.

    cfg = load_config(TeacherConfig, "configs/teacher/tiny.yaml", ["optim.lr=1e-4", "max_steps=10"])
    cfg = parse_cli(TeacherConfig, ["--config", "configs/teacher/tiny.yaml", "--optim.lr", "1e-4"])

Override paths are dotted (``data.groups.0.datasets.0.weight=2``); values are parsed as YAML
(``[1, 2]``, ``null``, ``true``; YAML 1.2 booleans, so ``no`` stays a string).

Command line (``parse_cli``): ``[--config FILE] [key=value | --key value ...]``.

- ``--config FILE`` / ``--config=FILE``: the YAML file (optional); it is applied first, then the
  command-line items in the order given, so a later item wins.
- Every key is also a flag: ``--max_steps 100``, ``--max-steps 100`` and ``--max-steps=100`` all
  mean ``max_steps=100``; nested keys too (``--optim.lr 1e-4``, ``--data.crop-size 112``).
  Dashes in a dataclass field's name are read as underscores; each flag becomes one ``key=value``
  item, so there is one value-parsing rule.
- Booleans (``bool``, ``bool | None``): ``--compile`` alone is true, ``--no-compile`` (or
  ``--data.no-hflip``) false; ``--compile true`` / ``--compile false`` are read too (the next token
  is taken only if it is exactly true or false, any case).
- Lists: ``--eval a.json b.json`` (every value up to the next option; the flag again extends the
  list), or one YAML list ``--size [120,160]``.
- ``aliases`` maps old flag names to keys (``{"workers": "num_workers"}``).
- ``-h`` / ``--help`` lists every key with its type and default, and exits 0.

Every problem raises ``ConfigError`` with one line naming the file, key or value; ``parse_cli``
and ``run_main`` turn it into ``PROG: error: LINE`` on stderr and exit code 2 (``fail``).
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import json
import os
import re
import sys
import textwrap
import types
import tokenize
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml


class _Loader(yaml.SafeLoader):
    """YAML with 1.2 booleans: only true/false, so ``precision=no`` stays the string "no"."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "tTfF":
    _Loader.yaml_implicit_resolvers.setdefault(_first, []).insert(
        0, ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"))
    )


def _load_yaml(text):
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """The one-line user error of every command: a bad config file, key or value.

    Its message is one line meant for the user; ``parse_cli`` and ``run_main`` print it as
    ``PROG: error: MESSAGE`` and exit 2 (a subclass may set another ``exit_code``). Stages subclass
    it for their own user errors.
    """

    exit_code = 2


def report_error(prog: str, message: str) -> None:
    """The one error format of every command: ``PROG: error: MESSAGE`` (one line) on stderr."""
    line = "; ".join(part.strip() for part in str(message).splitlines() if part.strip())
    print(f"{prog}: error: {line}", file=sys.stderr)


def fail(prog: str, message: str) -> typing.NoReturn:
    """``report_error`` then exit code 2."""
    report_error(prog, message)
    sys.exit(2)


def run_main(prog: str, main, argv: list[str] | None = None) -> int:
    """``main(argv)`` as a command: a raised ``ConfigError`` (or subclass) is reported as one line
    and returns its ``exit_code`` (2 unless the subclass says); a ``SystemExit`` from ``parse_cli``
    (bad option: 2, ``--help``: 0) returns its code. So ``main`` behaves the same in-process and
    as ``sys.exit(run_main(...))``.
    """
    try:
        result = main(argv)
    except ConfigError as err:
        report_error(prog, str(err))
        return err.exit_code
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return 0 if result is None else result


def _read_yaml(path: str | os.PathLike) -> dict:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as f:
            data = _load_yaml(f)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def _override(item: str) -> tuple[str, Any]:
    """``key=value`` -> (key, the value read as YAML 1.2; an unreadable value stays the raw string)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key=value")
    try:
        return key.strip(), _load_yaml(raw) if raw else ""
    except yaml.YAMLError:
        return key.strip(), raw


def _check_indexes(cfg, key: str) -> None:
    """An override into a list names an existing item (OmegaConf would say so in a traceback)."""
    from omegaconf import ListConfig, OmegaConf  # noqa: PLC0415

    parts = key.split(".")
    for n in range(1, len(parts)):
        node = OmegaConf.select(cfg, ".".join(parts[:n]), default=None)
        if isinstance(node, ListConfig) and (not parts[n].isdigit() or int(parts[n]) >= len(node)):
            raise ConfigError(f"override {'.'.join(parts[:n + 1])}: index {parts[n]!r} is not in a list of {len(node)} items")


_OMEGA_VALUE = re.compile(r"^(?:Value|Invalid value) '(.*?)'(?: of type '(\w+)')?")


def _explain(err, cls) -> str:
    """An OmegaConf error as this project's one line, naming the dotted key (``groups.0.parts``)."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue  # noqa: PLC0415

    key = re.sub(r"\[(\d+)\]", r".\1", str(getattr(err, "full_key", "") or ""))
    msg = str(getattr(err, "msg", None) or err).strip().splitlines()[0]
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)) and " not in " in msg:
        parent = key.rpartition(".")[0]
        _, tp = _key_type(cls, parent) if parent else (None, cls)
        fields = ", ".join(_init_fields(_unoptional(tp))) if dataclasses.is_dataclass(_unoptional(tp)) else "?"
        return f"unknown key '{key}'; valid keys{f' under {parent!r}' if parent else ''}: {fields}"
    if isinstance(err, MissingMandatoryValue):
        return f"missing required key '{key}'"
    tp = _unoptional(_key_type(cls, key)[1]) if key else None
    match = _OMEGA_VALUE.match(msg)
    got = match.group(1) if match else None
    got = repr(got) if got is None or (match and match.group(2) in (None, "str")) else got
    if get_origin(tp) is Literal:
        return f"{key}: {got} is not one of {', '.join(map(repr, get_args(tp)))}"
    expected = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp)
    if expected and match:
        return f"{key}: expected {expected}, got {got}"
    return f"{key}: {msg}" if key else msg


def _build(cls, data: dict, overrides: typing.Iterable[str]):
    """OmegaConf does the typing, merging and validation: the dataclass as a structured config (its
    defaults), the YAML merged onto it, each override set by its dotted key, then the dataclass built
    (its ``__post_init__`` checks included)."""
    from omegaconf import OmegaConf  # noqa: PLC0415
    from omegaconf.errors import OmegaConfBaseException  # noqa: PLC0415

    from distill.runtime import first_line  # noqa: PLC0415

    renamed = getattr(cls, "RENAMED_KEYS", {})  # earlier key names a config still reads
    data = {renamed.get(k, k): v for k, v in data.items()}
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(cls), data)
        for item in overrides:
            key, value = _override(item)
            first, dot, rest = key.partition(".")
            key = renamed.get(first, first) + dot + rest
            _check_indexes(cfg, key)
            OmegaConf.update(cfg, key, value, merge=True)
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:  # types and keys (merge, update), missing values (to_object)
        raise ConfigError(_explain(err, cls)) from None
    except (ValueError, TypeError) as err:  # a dataclass's own __post_init__ check
        raise ConfigError(f"{cls.__name__}: {first_line(err)}") from None


def load_config(cls, path: str | os.PathLike | None = None, overrides: typing.Iterable[str] = ()):
    """Build ``cls`` (a dataclass) from a YAML file (optional) and ``key=value`` overrides."""
    data = _read_yaml(path) if path is not None else {}
    try:
        return _build(cls, data, overrides)
    except ConfigError as err:
        raise ConfigError(f"{os.fspath(path)}: {err}" if path is not None else str(err)) from None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (tuples as lists), atomically."""
    from distill.runtime import write_atomic  # noqa: PLC0415

    write_atomic(path, yaml.safe_dump(_plain(to_dict(cfg)), sort_keys=False))


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x



# --- the command line ------------------------------------------------------------------------------

_NOT_A_KEY = object()


def _unoptional(tp):
    """``X | None`` -> ``X`` (a single non-None member), else ``tp`` unchanged."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _init_fields(cls) -> dict:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _key_type(cls, dotted: str):
    """The canonical dotted key (field names with underscores) and its type hint, walking the
    dataclass type hints (list items by index, dict entries by key); ``(None, _NOT_A_KEY)`` if
    ``dotted`` names no key of ``cls``."""
    tp, out = cls, []
    for part in dotted.split("."):
        tp = _unoptional(tp)
        origin = get_origin(tp)
        if not part:
            return None, _NOT_A_KEY
        if dataclasses.is_dataclass(tp):
            name = part.replace("-", "_")
            if name not in _init_fields(tp):
                return None, _NOT_A_KEY
            out.append(name)
            tp = get_type_hints(tp)[name]
        elif origin in (list, tuple):
            args = get_args(tp)
            if not part.isdigit():
                return None, _NOT_A_KEY
            if origin is tuple and args and args[-1] is not Ellipsis:
                if int(part) >= len(args):
                    return None, _NOT_A_KEY
                tp = args[int(part)]
            else:
                tp = args[0] if args else Any
            out.append(part)
        elif origin is dict:
            out.append(part)  # a dict's keys are data, kept as written
            tp = get_args(tp)[1] if get_args(tp) else Any
        elif tp is Any:
            out.append(part)
        else:
            return None, _NOT_A_KEY
    return ".".join(out), tp


_KEY_VALUE = re.compile(r"^[A-Za-z_][\w.-]*=")


def _is_list(tp) -> bool:
    return get_origin(_unoptional(tp)) in (list, tuple)


def _is_bool(tp) -> bool:
    if get_origin(tp) in (Union, types.UnionType):
        return bool in get_args(tp)
    return tp is bool


def _flat_fields(cls, prefix: str = ""):
    """``(dotted key, type hint, field, help)`` for every field, nested dataclasses flattened."""
    hints, helps = get_type_hints(cls), field_help(cls)
    for f in _init_fields(cls).values():
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _flat_fields(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", tp, f, helps.get(f.name, "")


@functools.lru_cache(maxsize=None)
def field_help(cls) -> dict[str, str]:
    """What each field means: the comment after it in the dataclass's source (``name: type = x  # help``),
    inherited fields included; {} where the source cannot be read."""
    helps = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        try:
            lines, start = inspect.getsourcelines(klass)
        except (OSError, TypeError):
            continue
        comments = {tok.start[0]: tok.string.lstrip("#").strip()
                    for tok in tokenize.generate_tokens(iter(lines).__next__) if tok.type == tokenize.COMMENT}
        body = ast.parse(textwrap.dedent("".join(lines))).body[0].body
        for node in body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.lineno in comments:
                helps[node.target.id] = comments[node.lineno]
    return helps


def _type_label(tp) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if tp is type(None):
        return "None"
    if origin is Literal:
        return "{" + ",".join(str(a) for a in args) + "}"
    if origin in (Union, types.UnionType):
        return " | ".join(_type_label(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else _type_label(a) for a in args)}]" if args else name
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _default_label(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    value = _plain(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value:
        return value
    return repr(value)


def _help(cls, prog: str, aliases: dict[str, str]) -> str:
    rows = [(key, _type_label(tp), _default_label(f), help) for key, tp, f, help in _flat_fields(cls)]
    kw = max((len(r[0]) for r in rows), default=0)
    tw = max((len(r[1]) for r in rows), default=0)
    dw = max((len(r[2]) for r in rows), default=0)
    lines = [
        f"usage: {prog} [--config FILE] [key=value | --key value ...]",
        "",
        "--config FILE first, then the items in order (a later one wins). Every key is also a flag:",
        "--key value, --key=value (dashes = underscores); booleans: --key, --no-key, --key true|false.",
        "",
        "keys (type, default, meaning):",
        *(f"  {key:<{kw}}  {label:<{tw}}  {default:<{dw}}  {help}".rstrip() for key, label, default, help in rows),
    ]
    if aliases:
        lines += ["", "aliases:", *(f"  --{name} -> {key}" for name, key in aliases.items())]
    return "\n".join(lines)


def _suggest(name: str, candidates: list[str]) -> str | None:
    match = difflib.get_close_matches(name, candidates, n=1)
    if match:
        return match[0]
    # "--lr" -> "--optim.lr": match the last component alone
    last = name.rsplit(".", 1)[-1]
    by_last = {}
    for c in candidates:
        by_last.setdefault(c.rsplit(".", 1)[-1], c)
    match = difflib.get_close_matches(last, list(by_last), n=1)
    return by_last[match[0]] if match else None


class _Flags:
    """Flag name -> canonical key, for one dataclass and its aliases."""

    def __init__(self, cls, aliases: dict[str, str] | None):
        self.cls = cls
        self.aliases = {self._norm(k): self._norm(v) for k, v in (aliases or {}).items()}

    @staticmethod
    def _norm(name: str) -> str:
        return ".".join(part.replace("-", "_") for part in name.split("."))

    def _lookup(self, name: str):
        first, dot, rest = name.partition(".")
        target = self.aliases.get(self._norm(name)) or (
            f"{self.aliases[self._norm(first)]}{dot}{rest}" if dot and self._norm(first) in self.aliases else name
        )
        return _key_type(self.cls, target)

    def resolve(self, name: str):
        """``(key, is_bool, negated)``; ``key`` is None for an unknown flag."""
        key, tp = self._lookup(name)
        if tp is not _NOT_A_KEY:
            return key, _is_bool(tp), False
        parts = name.split(".")
        for i in (0, len(parts) - 1) if len(parts) > 1 else (0,):  # --no-data.hflip, --data.no-hflip
            part = parts[i]
            if part[:3] in ("no-", "no_") and len(part) > 3:
                key, tp = self._lookup(".".join(parts[:i] + [part[3:]] + parts[i + 1 :]))
                if tp is not _NOT_A_KEY and _is_bool(tp):
                    return key, True, True
        return None, False, False

    def unknown(self, flag: str, name: str) -> str:
        candidates = ["config", *(key for key, *_ in _flat_fields(self.cls)), *self.aliases]
        match = _suggest(self._norm(name), candidates)
        hint = f"did you mean '--{match}'?" if match else "--help lists the keys"
        return f"unknown option {flag!r}; {hint}"


def _list_flag(argv: list[str], i: int, key: str, overrides: list[str], list_flags: dict) -> int:
    """A list flag takes every following value up to the next option (argparse's nargs="+"); the same
    flag again extends the list. Returns the index after its values."""
    items = []
    while i < len(argv) and not argv[i].startswith("--") and not _KEY_VALUE.match(argv[i]):
        items.append(_load_yaml(argv[i]) if argv[i] else "")
        i += 1
    if key in list_flags:
        items = list_flags[key] + items
        overrides.remove(f"{key}={json.dumps(list_flags[key])}")
    list_flags[key] = items
    overrides.append(f"{key}={json.dumps(items)}")
    return i


def parse_cli(cls, argv: list[str] | None = None, prog: str | None = None, aliases: dict[str, str] | None = None):
    """``[--config FILE] [key=value | --key value ...]`` -> a ``cls`` (see the module docstring).

    ``aliases``: old flag name -> key, e.g. ``{"workers": "num_workers"}``. ``-h``/``--help`` prints
    every key and exits 0; any problem goes through ``fail``: one line on stderr, exit code 2.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or os.path.basename(sys.argv[0])
    aliases = {**getattr(cls, "RENAMED_KEYS", {}), **(aliases or {})}
    flags = _Flags(cls, aliases)
    if "-h" in argv or "--help" in argv:
        print(_help(cls, prog, aliases or {}))
        sys.exit(0)
    path, overrides, list_flags = None, [], {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        nxt = argv[i] if i < len(argv) else None
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            flag = f"--{name}"
            if name == "config":
                if not eq:
                    if nxt is None or nxt.startswith("--"):
                        fail(prog, "option '--config' needs a value (a YAML file)")
                    value, i = nxt, i + 1
                if not value:
                    fail(prog, "option '--config' needs a value (a YAML file)")
                path = value
                continue
            key, is_bool, negated = flags.resolve(name)
            if key is None:
                fail(prog, flags.unknown(flag, name))
            if negated:
                if eq:
                    fail(prog, f"option {flag!r} takes no value")
                overrides.append(f"{key}=false")
            elif eq:
                overrides.append(f"{key}={value}")
            elif is_bool:
                if nxt is not None and nxt.lower() in ("true", "false"):
                    overrides.append(f"{key}={nxt.lower()}")
                    i += 1
                else:
                    overrides.append(f"{key}=true")
            elif _is_list(_key_type(cls, key)[1]) and nxt is not None and not nxt.startswith(("[", "--")):
                i = _list_flag(argv, i, key, overrides, list_flags)
            else:
                if nxt is None or nxt.startswith("--"):
                    fail(prog, f"option {flag!r} needs a value")
                overrides.append(f"{key}={nxt}")
                i += 1
        elif not arg.startswith("-") and arg.partition("=")[0] and "=" in arg:
            overrides.append(arg)
        else:
            fail(prog, f"unexpected argument {arg!r}; expected --config FILE, key=value or --key value")
    try:
        return load_config(cls, path, overrides)
    except ConfigError as err:
        fail(prog, str(err))
