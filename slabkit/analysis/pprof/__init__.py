"""pprof's ``profile.proto``, vendored, and the Python module generated from it.

``profile.proto`` and ``LICENSE`` (Apache 2.0) are copied unchanged from github.com/google/pprof
(``proto/profile.proto`` and ``LICENSE`` at commit b9395ee17fa0d0013c3fd96ac9482318422ac337).
``profile_pb2.py`` (and its type stub ``profile_pb2.pyi``) were generated from it, from the
repository root, with grpcio-tools 1.85.1 (libprotoc 35.1)::

    python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. \\
        slabkit/analysis/pprof/profile.proto

They are committed rather than generated at install or import time so that slabkit needs only
the ``protobuf`` runtime (the generated code asks for protobuf >= 7.35.1), not protoc or
grpcio-tools, on every machine it is installed on. ``tests/test_export.py`` regenerates the
module from the vendored ``.proto`` and checks it matches the committed one.
"""
