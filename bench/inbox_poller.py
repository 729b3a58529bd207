"""One operator's inbox page, as the browser's script drives it: sign in, then GET /inbox/poll
every ``--every`` seconds (the page's own period is 3 s) until killed.

    python bench/inbox_poller.py http://127.0.0.1:8000 NAME PASSWORD --every 3
"""

from __future__ import annotations

import argparse
import re
import time

import requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("name")
    parser.add_argument("password")
    parser.add_argument("--every", type=float, default=3.0)
    args = parser.parse_args()
    s = requests.Session()
    form = s.get(f"{args.base}/login", timeout=10).text
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', form).group(1)
    answer = s.post(f"{args.base}/login", data={"name": args.name, "password": args.password, "csrf_token": token},
                    timeout=10, allow_redirects=False)
    assert answer.status_code in (302, 303), answer.status_code
    while True:
        started = time.monotonic()
        s.get(f"{args.base}/inbox/poll", timeout=10, headers={"Accept": "application/json"}).raise_for_status()
        time.sleep(max(0.0, args.every - (time.monotonic() - started)))


if __name__ == "__main__":
    main()
