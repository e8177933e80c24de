"""Replaying a trace file: ``sapg replay TRACE``, and the same from Python.

A recorded incident becomes a regression test in a few lines::

    from transports.replay import replay_file

    def test_incident_1234() -> None:
        divergence = replay_file("tests/data/traces/incident-1234.jsonl")
        assert divergence is None, divergence

The core does the work (:func:`sapg_core.replay`); this module only reads the file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from sapg_core import (
    Divergence,
    RequestReceived,
    TraceError,
    TraceLine,
    TraceStep,
    parse_trace,
    replay,
)

__all__ = ["cmd_replay", "load_trace", "replay_file"]


def load_trace(path: str | os.PathLike[str]) -> list[TraceLine]:
    """Read and parse a trace file.

    Raises:
        TraceError: the file cannot be read, or is not a trace (corrupt, truncated).
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise TraceError(0, f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from None
    return parse_trace(data)


def replay_file(path: str | os.PathLike[str]) -> Divergence | None:
    """Replay the trace at ``path`` on fresh gateways.

    Returns:
        None when every action is the recorded one, else the first divergence.

    Raises:
        TraceError: the trace cannot be read or replayed.
    """
    return replay(load_trace(path))


def cmd_replay(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``sapg replay TRACE``: 0 all actions match, 1 a divergence, 2 an unusable trace."""
    try:
        lines = load_trace(args.trace)
        divergence = replay(lines)
    except TraceError as exc:
        print(f"sapg replay: {args.trace}: {exc}", file=sys.stderr)
        return 2
    if divergence is not None:
        print(f"sapg replay: {args.trace}: diverged at {divergence}")
        return 1
    steps = [line for line in lines if isinstance(line, TraceStep)]
    requests = sum(isinstance(step.event, RequestReceived) for step in steps)
    print(
        f"sapg replay: {args.trace}: {len(steps)} events ({requests} requests) replayed, "
        "every action matches"
    )
    return 0
