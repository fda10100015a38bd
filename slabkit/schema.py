"""The table schema, at its stable import path (it lives in :mod:`slabkit.model.schema`)."""
from slabkit.model.schema import *  # noqa: F401,F403
from slabkit.model.schema import TABLES, Column, describe, empty, validate  # noqa: F401
