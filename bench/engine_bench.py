"""Engine microbenchmark: turns per second on one core for the welcome flow (no I/O).

    .venv/bin/python bench/engine_bench.py [--turns 50000] [--repeat 5]

Each pair of turns is "hi" (starts the flow, renders the greeting and reply buttons) and a
button press (answers the question and enters another flow). Prints the median of the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows import engine as e  # noqa: E402
from flows.document import flow_files, parse_flow  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent / "flows" / "examples"
    library = e.Library([parse_flow(p.read_text(), str(p)).doc for p in flow_files([str(root)])])
    contact = {"id": 1, "wa_id": "27820000001", "name": "Ana", "fields": {}, "opted_out": False}
    settings = e.EngineSettings()
    hi = e.Inbound(text="hi")
    press = e.Inbound(type="button_reply", text="Sign up", reply_id="signup")
    rates = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        for _ in range(args.turns // 2):
            turn = e.handle(library, e.Session(), hi, contact, settings)
            e.handle(library, turn.session, press, contact, settings)
        rates.append(args.turns / (time.perf_counter() - start))
    print(f"welcome flow: median {statistics.median(rates):,.0f} turns/s on one core "
          f"(min {min(rates):,.0f}, max {max(rates):,.0f}, {args.repeat} x {args.turns} turns)")


if __name__ == "__main__":
    main()
