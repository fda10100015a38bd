"""ftrace backend (being written)."""
from . import Backend


class FtraceBackend(Backend):
    name = "ftrace"
    streaming = True

    def unavailable(self, target, facts):
        return "not implemented yet"


def remove_instance(target, tracefs, name):
    raise NotImplementedError
