"""Where the servers' time goes under load: py-spy on delivery and a gateway.

    .venv/bin/python -m loadtest.profile_messaging [--seconds 20] [--top 25]

Runs ``loadtest.bench_messaging --only parley`` (saturation, then paced) and,
once its saturation phase starts, samples the delivery process and gateway1
with py-spy (``record --format raw``: folded stacks, 100 Hz, idle frames
left out) for the length of the phase. Prints, per process, the functions
with the most samples on the CPU: *self* (the function itself) and
*total* (it or what it calls), as shares of the process's samples. Root
(ptrace) is needed, as for any py-spy of another process.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import sys
import tempfile
from pathlib import Path


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="saturation phase length")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--clients", type=int, default=100)
    opts = p.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        bench = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadtest.bench_messaging", "--only", "parley",
            "--clients", str(opts.clients), "--seconds", str(opts.seconds),
            "--data-dir", str(Path(tmp) / "stack"),
            stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert bench.stderr is not None
        while True:
            line = (await bench.stderr.readline()).decode()
            if not line:
                raise SystemExit("the benchmark ended before its saturation phase")
            print(line, end="", file=sys.stderr)
            if "saturation:" in line:
                break
        pids = {name: _pid(name) for name in ("delivery", "gateway1")}
        out = {name: Path(tmp) / f"{name}.txt" for name in pids}
        spies = []
        for name, pid in pids.items():
            argv = [spy, "record", "--pid", str(pid), "--duration", str(int(opts.seconds)),
                    "--rate", "100", "--format", "raw", "--output", str(out[name]),
                    "--nonblocking"]  # fmt: skip
            spies.append(await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            ))  # fmt: skip
        await asyncio.gather(*(s.wait() for s in spies))
        await bench.stderr.read()
        await bench.wait()
        for name, path in out.items():
            print(f"\n## {name}: top functions by CPU samples (saturation phase)\n")
            print(summary(path.read_text(), opts.top))


def _pid(service: str) -> int:
    """The process running ``scripts.stack exec <service>`` (newest)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [c.decode(errors="replace") for c in cmd]
        if service == "delivery" and "services.delivery" in words:
            found.append(int(entry))
        elif service.startswith("gateway") and "services.gateway" in words:
            env = Path(f"/proc/{entry}/environ").read_bytes()
            if f"PARLEY_GATEWAY_ID=gw-{service[-1]}".encode() in env:
                found.append(int(entry))
    if not found:
        raise SystemExit(f"no {service} process found")
    return max(found)


def summary(folded: str, top: int) -> str:
    """Self and total shares per function from py-spy's folded stacks."""
    self_n: collections.Counter[str] = collections.Counter()
    total_n: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in folded.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_short(f) for f in stack.split(";")]
        self_n[frames[-1]] += n
        for f in set(frames):
            total_n[f] += n
    if not samples:
        return "(no samples)"
    rows = ["| function | self | total |", "|---|---:|---:|"]
    for fn, n in self_n.most_common(top):
        rows.append(f"| `{fn}` | {n / samples:.1%} | {total_n[fn] / samples:.1%} |")
    return "\n".join(rows) + f"\n\n{samples} samples"


def _short(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``module.func``."""
    name, _, where = frame.partition(" (")
    path = where.split(":", 1)[0]
    module = Path(path).stem if path else "?"
    return f"{module}.{name.strip()}"


if __name__ == "__main__":
    asyncio.run(main())
