"""Tracer backends: the contract (:mod:`slabkit.backends.base`) and one module per tracer."""
from slabkit.backends.base import (
    Backend,
    Options,
    Parsed,
    Program,
    RunResult,
    choose,
    get_backend,
    registry,
    run_marked_tracer,
)

__all__ = ["Backend", "Options", "Parsed", "Program", "RunResult", "choose", "get_backend",
           "registry", "run_marked_tracer"]
