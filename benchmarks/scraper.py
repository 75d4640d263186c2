"""Scrape the shipper's /metrics every interval, as Prometheus would, from its own process.

    python -m benchmarks.scraper URL --interval 1 --out PATH

Writes one line per scrape to PATH: `<unix time> <status> <bytes> <shipper_lines_sent_total>`,
so the harness can report how many scrapes the run took and cross-check the
counter against what the receiver got. Runs until killed.
"""

from __future__ import annotations

import argparse
import time
import http.client
import urllib.parse


def lines_sent(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("shipper_lines_sent_total "):
            return line.split()[1]
    return "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    url = urllib.parse.urlsplit(args.url)
    conn: http.client.HTTPConnection | None = None
    with open(args.out, "a", encoding="ascii", buffering=1) as out:
        while True:
            started = time.monotonic()
            try:
                # One kept-alive connection, as Prometheus scrapes.
                if conn is None:
                    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=5)
                conn.request("GET", url.path or "/metrics")
                resp = conn.getresponse()
                body = resp.read().decode()
                out.write(f"{time.time():.3f} {resp.status} {len(body)} {lines_sent(body)}\n")
            except (OSError, http.client.HTTPException) as e:
                out.write(f"{time.time():.3f} error 0 - {type(e).__name__}\n")
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(max(0.0, args.interval - (time.monotonic() - started)))


if __name__ == "__main__":
    main()
