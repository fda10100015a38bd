"""slabkit's own BPF counter: ``slabcount.bpf.c`` (the in-kernel program) and ``slabcount.c``
(its libbpf loader), built once per source change by :mod:`slabkit.slabcount.build`."""
