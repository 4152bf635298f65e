"""Reading a spec: a YAML file plus `--set` overrides, validated into a `SweepSpec`.

Every failure (unreadable file, bad YAML, wrong value) becomes `SpecError` with a one-line
message that names the field.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from search_spaces.knobs import KNOBS
from sweeps.config.layout import DEFAULT_STORAGE_PATH, SPEC_FILE
from sweeps.config.spec import SweepSpec
from trainers.errors import UserError


class SpecError(UserError, ValueError):
    """A spec problem, phrased for the user: `field: what is wrong`."""


def load_spec(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    """Read, override and validate a spec; every failure is a one-line `SpecError`."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"spec file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(f"spec file {path}: invalid YAML{where} ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"spec file {path}: expected a mapping of sections at the top level")
    for item in overrides or []:
        apply_override(raw, item)
    return validate_spec(raw, source=str(path))


def validate_spec(raw: dict, source: str = "spec") -> SweepSpec:
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(f"{source}: {format_validation_error(exc)}") from None


def format_validation_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-union")))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; see `rewarm validate --help`)"
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"


def apply_override(raw: dict, item: str) -> None:
    """`knob=value` sets a search-space knob; `a.b.c=value` sets any spec field."""
    if "=" not in item:
        raise SpecError(f"--set {item!r}: expected key=value")
    key, value_text = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(value_text)
    except yaml.YAMLError:
        value = value_text
    if key in KNOBS:
        raw.setdefault("search_space", {}).setdefault("params", {})[key] = value
        return
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(f"--set {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def load_sweep_spec(sweep: str, storage_path: str = DEFAULT_STORAGE_PATH) -> SweepSpec:
    """The spec a sweep was started with, from its directory (a path, or a name under storage).

    The directory found is the one resumed: the spec's storage path is set to its parent, so a
    sweep resumed from another working directory, or moved with its storage, is still itself.
    """
    candidates = [Path(sweep), Path(storage_path).expanduser() / sweep]
    for d in candidates:
        if (d / SPEC_FILE).exists():
            spec = validate_spec(yaml.safe_load((d / SPEC_FILE).read_text()), source=str(d / SPEC_FILE))
            d = d.expanduser().resolve()
            if d.name != spec.name:
                raise SpecError(f"{d}: holds sweep {spec.name!r}; a sweep directory must keep its sweep's name "
                                f"(rename it back to {spec.name})")
            return spec.model_copy(update={"storage_path": str(d.parent)})
    raise SpecError(f"sweep {sweep!r} not found (looked for {SPEC_FILE} in {', '.join(str(c) for c in candidates)}); "
                    "pass the sweep directory or --storage-path")
