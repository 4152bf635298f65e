"""Named, typed search spaces over the re-warming knobs (see `registry`)."""

from search_spaces.params import Choice, Fixed, LogUniform, Param, Uniform, coerce_param
from search_spaces.knobs import KNOBS, Knob
from search_spaces.registry import REGISTRY, SearchSpace, get, validate_params

__all__ = ["Choice", "Fixed", "KNOBS", "Knob", "LogUniform", "Param", "REGISTRY", "SearchSpace", "Uniform",
           "coerce_param", "get", "validate_params"]
