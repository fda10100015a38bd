"""perf backend (being written)."""
from . import Backend


class PerfBackend(Backend):
    name = "perf"
    streaming = True

    def unavailable(self, target, facts):
        return "not implemented yet"
