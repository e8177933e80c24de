"""Summarise ``py-spy record --format raw`` output: the top functions by own and total time.

python benchmarks/spy_report.py bench-results/profile-static.raw [TOP]
"""

from __future__ import annotations

import collections
import re
import sys

_FRAME = re.compile(r"(?P<function>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _name(frame: str) -> str:
    """``function (file)``, with site-packages and the checkout path cut off."""
    found = _FRAME.match(frame)
    if found is None:
        return frame
    path = re.sub(r".*site-packages/", "", found["file"])
    path = re.sub(r".*/(sapg_core|transports|benchmarks)/", r"\1/", path)
    return f"{found['function']} ({path})"


#: Leaf frames of a thread at rest that py-spy still samples (a timed wait looks busy to it):
#: the access log's writer thread waiting for its next flush, an idle worker thread.
IDLE_LEAVES = frozenset({"Condition.wait (threading.py)", "wait (threading.py)"})


def summarise(raw: str, *, top: int = 30) -> str:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = idle = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_name(frame) for frame in stack.split(";")]
        if frames[-1] in IDLE_LEAVES:
            idle += count
            continue
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
    lines = [f"{samples} samples ({idle} more of threads at rest in a wait, left out)", ""]
    lines += ["own time (the function itself, C calls included):"]
    lines += [f"  {100 * n / samples:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", "total time (the function and everything it calls):"]
    lines += [f"  {100 * n / samples:5.1f}%  {name}" for name, n in total.most_common(top + 15)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as file:
        text = file.read()
    print(summarise(text, top=int(sys.argv[2]) if len(sys.argv) > 2 else 30), end="")
