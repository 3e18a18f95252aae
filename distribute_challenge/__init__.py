"""The original challenge's module name: an alias of :mod:`distribute_client`,
so scripts written for it (``from distribute_challenge import compute_this``)
run unchanged."""

from distribute_client import *  # noqa: F403
from distribute_client import __all__ as __all__
