"""sapg_core: the pure, I/O-free core of the sapg API gateway.

Feed :class:`Event` objects to :meth:`Gateway.handle` and carry out the
:class:`Action` objects it returns. The core never touches sockets, files,
the environment, the clock or randomness: those arrive inside events.
"""
