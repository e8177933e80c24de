"""Developer sessions: tests, lint, typecheck, bench.

    nox -s tests       # the whole suite (core + loopback transport tests)
    nox -s lint        # ruff check + ruff format --check
    nox -s typecheck   # mypy (strict on sapg_core and transports)
    nox -s bench       # benchmarks; writes bench-results/ and prints ratios
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
    """Measure against same-run baselines. Needs wrk (installed with apt-get when missing)."""
    import shutil

    if shutil.which("wrk") is None:
        session.run("apt-get", "install", "-y", "-q", "wrk", external=True)
    session.install("-e", ".")
    session.run("python", "benchmarks/run.py", *session.posargs)
