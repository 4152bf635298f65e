"""Named, typed search spaces over the re-warming knobs (see `registry`)."""

from search_spaces.params import Choice, Fixed, LogUniform, Param, Uniform, coerce_param
from search_spaces.registry import KNOBS, REGISTRY, SearchSpace, get, validate_params

__all__ = ["Choice", "Fixed", "KNOBS", "LogUniform", "Param", "REGISTRY", "SearchSpace", "Uniform",
           "coerce_param", "get", "validate_params"]
