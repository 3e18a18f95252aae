"""``tcp://host:port``, Dask's own form of a scheduler's address: the ``dask://`` backend."""

from distribute_client.backends.dask import check, connect

__all__ = ["check", "connect"]
