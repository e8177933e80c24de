"""In-process cost of one request through the HTTP glue, per parser backend (no sockets).

One keep-alive connection; each round feeds a typical GET (8 header fields)
to :meth:`ServerConnection.receive_data`, takes the events up to
:class:`NeedData`, and renders a small JSON answer with
:meth:`ServerConnection.send_response`: what a driver does per request,
less the socket. Prints CPU microseconds per request (process time, so a
busy machine inflates it less), best of ``--repeat`` runs, beside a floor:
httptools alone with a protocol that only collects the fields.

Run: ``python benchmarks/parsers.py [--number N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import time
import timeit

import httptools

from sapg_core import PARSER_BACKENDS, NeedData, ServerConnection

REQUEST = (
    b"GET /api/items/42?expand=owner HTTP/1.1\r\n"
    b"Host: api.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0\r\n"
    b"Accept: application/json\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-GB,en;q=0.9\r\n"
    b"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln\r\n"
    b"Cookie: session=abc123; theme=dark\r\n"
    b"X-Request-Id: 4f1c2a9e-0d7b-4a51-9a3e-2b1f0c6d8e7a\r\n"
    b"\r\n"
)
ANSWER_HEADERS = (("content-type", "application/json"), ("x-powered-by", "sapg"))
BODY = b'{"status":"ok"}'
DATE = "Mon, 07 Dec 2026 23:00:00 GMT"


def one_request(conn: ServerConnection) -> bytes:
    conn.receive_data(REQUEST)
    while not isinstance(conn.next_event(), NeedData):
        pass
    out = conn.send_response(200, ANSWER_HEADERS, BODY, date=DATE)
    conn.next_event()  # moves to the next cycle (NeedData)
    return out


def measure(backend: str, number: int, repeat: int) -> float:
    """Best microseconds per request over ``repeat`` runs of ``number`` requests."""
    conn = ServerConnection(backend=backend)
    expected = one_request(conn)
    assert one_request(conn) == expected  # same bytes every round: the loop is sound
    return best(lambda: one_request(conn), number, repeat)


def best(work: object, number: int, repeat: int) -> float:
    times = timeit.repeat(work, number=number, repeat=repeat, timer=time.process_time)  # type: ignore[arg-type]
    return min(times) / number * 1e6


class _Collect:
    """The least a protocol can do: keep the URL and the fields."""

    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.url = b""

    def on_message_begin(self) -> None:
        self.fields = []

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))


def floor(number: int, repeat: int) -> float:
    parser = httptools.HttpRequestParser(_Collect())
    return best(lambda: parser.feed_data(REQUEST), number, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=20_000, help="requests per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is reported")
    args = parser.parse_args()
    results = {name: measure(name, args.number, args.repeat) for name in PARSER_BACKENDS}
    for name, micros in results.items():
        print(f"{name:10} {micros:6.2f} us/request (parse, events, render)")
    print(f"{'floor':10} {floor(args.number, args.repeat):6.2f} us/request (httptools parse alone)")
    print(f"h11 / httptools: {results['h11'] / results['httptools']:.2f}x")


if __name__ == "__main__":
    main()
