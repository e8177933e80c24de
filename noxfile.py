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
    """Issue 8's figures against same-run baselines; draws docs/benchmarks.png.

    wrk and nginx come from apt (``apt-get update`` once, then install) when
    either is missing (as root, else through sudo). uvloop and httpx (the Python anchor
    proxy), matplotlib and py-spy are installed here only: they are not sapg
    dependencies. ``nox -s bench -- --quick`` is a smoke test; ``--only
    static,proxy`` runs some parts (see benchmarks/run.py and docs/benchmarks.md).
    """
    import os
    import shutil

    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
    )
    if shutil.which("wrk") is None or nginx is None:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run(*sudo, "apt-get", "update", "-q", external=True, env=env)
        apt = [*sudo, "apt-get", "install", "-y", "-q", "wrk", "nginx"]
        session.run(*apt, external=True, env=env)
    # [asgi]: uvicorn + httptools for the ASGI driver and the anchors
    session.install("-e", ".[asgi]", "matplotlib", "uvloop", "httpx", "py-spy")
    session.run("python", "benchmarks/run.py", *session.posargs)
