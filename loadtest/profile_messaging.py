"""Where the servers' time goes under load: py-spy on delivery and a gateway.

    .venv/bin/python -m loadtest.profile_messaging [--seconds 20] [--top 25] [--rate 300]
    .venv/bin/python -m loadtest.profile_messaging --fanout 1000 [--seconds 10]

Runs ``loadtest.bench_messaging --only parley`` (saturation, then paced; with
``--rate``, the paced phase alone at that rate), or with ``--fanout N``
``loadtest.bench_fanout --systems parley --members N`` (its saturation phase),
and, once that phase starts,
samples the delivery process and gateway1 with py-spy (``record --format
raw``: folded stacks, 100 Hz, idle frames left out) for the length of the
phase. Prints, per process, the functions with the most samples on the CPU:
*self* (the function itself) and
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
    p.add_argument("--rate", type=float, help="profile a paced phase at this rate instead")
    p.add_argument(
        "--fanout", type=int, metavar="MEMBERS", help="profile a room fan-out's saturation instead"
    )
    p.add_argument("--keep", type=Path, help="also copy the raw folded stacks into this directory")
    opts = p.parse_args()
    paced = ["--paced-only", "--rate", str(opts.rate)] if opts.rate else []
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        if opts.fanout:
            argv = ["loadtest.bench_fanout", "--systems", "parley", "--members", str(opts.fanout),
                    "--seconds", str(opts.seconds)]  # fmt: skip
        else:
            argv = ["loadtest.bench_messaging", "--only", "parley", "--clients", str(opts.clients),
                    "--seconds", str(opts.seconds), "--data-dir", str(Path(tmp) / "stack"),
                    *paced]  # fmt: skip
        bench = await asyncio.create_subprocess_exec(
            sys.executable, "-m", *argv,
            stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert bench.stderr is not None
        try:
            await _profile(bench, opts, spy, Path(tmp))
        finally:
            if bench.returncode is None:
                bench.terminate()  # the benchmark stops its stack on SIGTERM
                await bench.wait()


async def _profile(
    bench: asyncio.subprocess.Process, opts: argparse.Namespace, spy: str, tmp: Path
) -> None:
    assert bench.stderr is not None
    while True:
        line = (await bench.stderr.readline()).decode()
        if not line:
            raise SystemExit("the benchmark ended before its saturation phase")
        print(line, end="", file=sys.stderr)
        if opts.fanout:
            if "warm-up:" in line and "incomplete" in line:
                break  # the saturation phase starts now
        elif ("paced:" if opts.rate else "saturation:") in line:
            break
    pids = {name: _pid(name, bench.pid) for name in ("delivery", "gateway1")}
    out = {name: tmp / f"{name}.txt" for name in pids}
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
        phase = f"paced phase, {opts.rate:g} msgs/s" if opts.rate else "saturation phase"
        if opts.fanout:
            phase = f"fan-out to {opts.fanout} members, saturation"
        print(f"\n## {name}: top functions by CPU samples ({phase})\n")
        print(summary(path.read_text(), opts.top))
        if opts.keep:
            opts.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, opts.keep / path.name)


def _pid(service: str, ancestor: int) -> int:
    """The process of the benchmark ``ancestor`` that runs ``service``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            words = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if not _descends(int(entry), ancestor):
            continue
        if service == "delivery" and "services.delivery" in words:
            return int(entry)
        if "services.gateway" in words and f"PARLEY_GATEWAY_ID={service}".encode() in env:
            return int(entry)
    raise SystemExit(f"no {service} process found")


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


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
