"""Typed parameters of a search space: a fixed value or a distribution to sample."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Fixed(_Param):
    """A knob held at one value."""

    type: Literal["fixed"] = "fixed"
    value: float | str = Field(description="The value.")

    def describe(self) -> str:
        return f"{self.value}"


class Uniform(_Param):
    """A float drawn uniformly from [low, high]."""

    type: Literal["uniform"] = "uniform"
    low: float = Field(description="Lower bound (inclusive).")
    high: float = Field(description="Upper bound (inclusive).")

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high:
            raise ValueError(f"uniform: low ({self.low}) must be below high ({self.high})")
        return self

    def describe(self) -> str:
        return f"uniform[{self.low:g}, {self.high:g}]"


class LogUniform(Uniform):
    """A positive float drawn log-uniformly from [low, high] (for learning rates)."""

    type: Literal["loguniform"] = "loguniform"

    @model_validator(mode="after")
    def _positive(self):
        if self.low <= 0:
            raise ValueError(f"loguniform: low must be > 0, got {self.low}")
        return self

    def describe(self) -> str:
        return f"loguniform[{self.low:g}, {self.high:g}]"


class Choice(_Param):
    """One of a list of values (a grid axis, or the schedule name)."""

    type: Literal["choice"] = "choice"
    values: list[float | str] = Field(min_length=1, description="The values to choose from.")

    def describe(self) -> str:
        return "{" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in self.values) + "}"


Param = Annotated[Union[Fixed, LogUniform, Uniform, Choice], Field(discriminator="type")]


def _number_or_text(v):
    # YAML 1.1 reads "3e-4" (no dot) as a string; users mean the number.
    if isinstance(v, bool):
        raise ValueError(f"{v!r} is not a knob value")
    if isinstance(v, int):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def coerce_param(raw) -> Fixed | Uniform | LogUniform | Choice:
    """Accept the YAML shorthand: a bare scalar means a fixed value, a list a choice."""
    if isinstance(raw, _Param):
        return raw
    raw = _number_or_text(raw) if not isinstance(raw, (list, dict)) else raw
    if isinstance(raw, list):
        raw = [_number_or_text(v) for v in raw]
    elif isinstance(raw, dict):
        raw = {k: (_number_or_text(v) if k in ("low", "high", "value") else
                   [_number_or_text(x) for x in v] if k == "values" and isinstance(v, list) else v)
               for k, v in raw.items()}
    if isinstance(raw, (float, str)):
        return Fixed(value=raw)
    if isinstance(raw, list):
        return Choice(values=raw)
    if isinstance(raw, dict):
        kind = raw.get("type")
        cls = {"fixed": Fixed, "uniform": Uniform, "loguniform": LogUniform, "choice": Choice}.get(kind)
        if cls is None:
            raise ValueError(f"unknown parameter type {kind!r}; use fixed, uniform, loguniform or choice")
        return cls(**raw)
    raise ValueError(f"cannot read {raw!r} as a parameter: give a value, a list, or {{type: ..., ...}}")


def scale(param, factor: float):
    """Multiply a numeric parameter by `factor` (used to scale paper LRs to a model)."""
    if isinstance(param, Fixed):
        return Fixed(value=param.value * factor) if isinstance(param.value, float) else param
    if isinstance(param, (Uniform, LogUniform)):
        return type(param)(low=param.low * factor, high=param.high * factor)
    if isinstance(param, Choice):
        return Choice(values=[v * factor if isinstance(v, float) else v for v in param.values])
    raise TypeError(param)


def bounds(param) -> tuple[float, float] | None:
    """Numeric range a parameter can take, for validation against a knob's limits."""
    if isinstance(param, Fixed):
        return (param.value, param.value) if isinstance(param.value, float) else None
    if isinstance(param, (Uniform, LogUniform)):
        return param.low, param.high
    nums = [v for v in param.values if isinstance(v, float)]
    return (min(nums), max(nums)) if nums else None
