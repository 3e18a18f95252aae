"""Which functions a call's ``source_files`` speak for: the one walk both sides make.

A call pickled by value loses its code's file name on the way (cloudpickle,
3.1.3 on, names it ``<dynamic-code>``), and with it the source lines of the
caller's remote tracebacks. So the client records, by qualified name, the
file of the function and of every function of its module that it reaches
through its globals (helpers, itself when recursive, a notebook cell's
helper from another cell: ``CallRequest.source_files``); the worker walks
the unpickled function the same way and gives each one its file back. Both
walk with :func:`same_module_functions`, so they agree on which functions
those are.
"""

from __future__ import annotations

import types
from collections.abc import Iterator


def same_module_functions(function: object) -> Iterator[types.FunctionType]:
    """``function`` (if it is a plain function) and every function of its
    module it reaches through the global names its code uses, each once.

    The walk goes through globals only: nested functions and closures are
    code constants of the function that defines them, and share its file.
    """
    module = getattr(function, "__module__", None)
    seen: set[int] = set()
    stack: list[object] = [function]
    while stack:
        item = stack.pop()
        if not isinstance(item, types.FunctionType) or item.__module__ != module:
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        namespace = item.__globals__
        reached = [namespace[name] for name in _global_names(item.__code__) if name in namespace]
        yield item
        stack += reached


def _global_names(code: types.CodeType) -> set[str]:
    """The names ``code`` and the code nested in it look up (globals among them)."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names
