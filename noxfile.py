"""Developer sessions: tests, lint, typecheck, bench.

    nox -s tests       # the whole suite (core + loopback transport tests)
    nox -s lint        # ruff check + ruff format --check
    nox -s typecheck   # mypy (strict on sapg_core and transports)
    nox -s bench       # benchmarks; writes bench-results/, docs/benchmarks.png, prints ratios
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.error_on_missing_interpreters = True


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("python", "-bb", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "sapg_core", "transports", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "sapg_core", "transports")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[test]", "mypy>=1.10")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Measure against same-run baselines; draw docs/benchmarks.png. Needs wrk (apt-get)."""
    import shutil

    if shutil.which("wrk") is None:
        session.run("apt-get", "install", "-y", "-q", "wrk", external=True)
    # [asgi]: uvicorn + httptools for the ASGI driver case; matplotlib for the chart
    session.install("-e", ".[asgi]", "matplotlib")
    session.run("python", "benchmarks/run.py", *session.posargs)
