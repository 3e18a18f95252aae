"""Generated gRPC modules for ``proto/pool.proto`` (do not edit by hand).

Regenerate with the command in the README's "Development" section;
``tests/test_proto.py`` fails when these files are stale.
"""
