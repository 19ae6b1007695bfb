"""A real FHIR R4 server for integration tests: sekmet-fhir (FastAPI + SQLite), run as a subprocess.

`bash tests/run` installs it into `.venv-fhir`, a virtual environment of its own (it pins its
own FastAPI, pydantic and fhir.resources). `running_fhir_server` starts it on a free loopback
port with its database under a work directory, `seed` loads patient Bundles with stable ids,
`analyze` gives SQLite the statistics its query planner needs after a bulk load.
"""

import contextlib
import copy
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.loopback import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
FHIR_VENV = REPO_ROOT / ".venv-fhir"
UVICORN = FHIR_VENV / "bin" / "uvicorn"
# Keep in step with the pin in tests/run.
SEKMET_VERSION = "0.1.1"

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
SEED_TIMEOUT_S = 120.0
FHIR_JSON = "application/fhir+json"
# Without it sekmet silently ignores search parameters it does not support (a typo matches all).
STRICT = {"Prefer": "handling=strict", "Accept": FHIR_JSON}
URN_UUID = "urn:uuid:"
# Settings the server would read from the environment over its settings file.
_SEKMET_ENV = ("SEKMET_CONFIG", "SEKMET_DB", "SEKMET_BASE_URL", "SEKMET_PORT", "SEKMET_PUBLIC_URL")


class FhirServerError(RuntimeError):
    """The test FHIR server could not be started, or refused data."""


@dataclass(frozen=True)
class FhirServer:
    base_url: str
    db_path: Path
    pid: int
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False, compare=False)

    def stop(self) -> None:
        """Terminate the server by its PID; kill it if it has not exited within 10 s."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)


def installed() -> bool:
    """Whether `.venv-fhir` holds the pinned sekmet-fhir (`bash tests/run` installs it)."""
    dist_info = f"sekmet_fhir-{SEKMET_VERSION}.dist-info"
    return UVICORN.is_file() and any(FHIR_VENV.glob(f"lib/python3*/site-packages/{dist_info}"))


def write_settings(work_dir: Path, port: int) -> Path:
    settings = {
        "base_url": f"http://127.0.0.1:{port}/fhir",
        "host": "127.0.0.1",
        "port": port,
        "data_dir": str(work_dir / "fhirdata"),
        # On by default: it would "fulfil" ServiceRequests and MedicationRequests by itself.
        "simulator": {"enabled": False},
        "validation": {"inbound": "strict"},
        "log_inbound": False,
    }
    path = work_dir / "sekmet-settings.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    return path


def start_fhir_server(work_dir: Path, port: int | None = None) -> FhirServer:
    """Start sekmet on 127.0.0.1 (a free port unless one is given) and wait until it answers.

    The database is `work_dir/fhirdata/sekmet.db`; the server's output goes to
    `work_dir/sekmet.log`.
    A port picked here can be taken by someone else before the server binds it: then try another.
    """
    if not installed():
        raise FhirServerError(f"sekmet-fhir {SEKMET_VERSION} is not installed in {FHIR_VENV}")
    work_dir.mkdir(parents=True, exist_ok=True)
    attempts = 1 if port is not None else 3
    for attempt in range(1, attempts + 1):
        try:
            return _start(work_dir, port if port is not None else free_port())
        except _PortTaken:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def running_fhir_server(work_dir: Path, port: int | None = None) -> Iterator[FhirServer]:
    server = start_fhir_server(work_dir, port)
    try:
        yield server
    finally:
        server.stop()


class _PortTaken(FhirServerError):
    pass


def _start(work_dir: Path, port: int) -> FhirServer:
    settings = write_settings(work_dir, port)
    log_path = work_dir / "sekmet.log"
    env = {k: v for k, v in os.environ.items() if k not in _SEKMET_ENV}
    env["SEKMET_CONFIG"] = str(settings)
    command = [
        str(UVICORN),
        "sekmet.main:app_factory",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=work_dir,  # sekmet resolves some relative paths (keys/) against it
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = FhirServer(
        base_url=f"http://127.0.0.1:{port}/fhir",
        db_path=work_dir / "fhirdata" / "sekmet.db",
        pid=process.pid,
        log_path=log_path,
        process=process,
    )
    try:
        _wait_until_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_until_ready(server: FhirServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(timeout=2.0) as client:
        while True:
            code = server.process.poll()
            if code is not None:
                tail = _log_tail(server.log_path)
                error = _PortTaken if "address already in use" in tail.lower() else FhirServerError
                raise error(f"sekmet exited with status {code} while starting:\n{tail}")
            with contextlib.suppress(httpx.TransportError):
                if client.get(f"{server.base_url}/metadata").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise FhirServerError(
                    f"sekmet did not answer GET {server.base_url}/metadata within "
                    f"{START_TIMEOUT_S:.0f} s:\n{_log_tail(server.log_path)}"
                )
            time.sleep(0.1)


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        return f"(no log at {path}: {error})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


# --- Loading data -------------------------------------------------------------------------------


def to_transaction(bundle: Mapping[str, Any]) -> dict[str, Any]:
    """A `collection` Bundle as a `transaction` of `PUT Type/id` entries, so ids stay stable.

    Every `reference` to an entry's `urn:uuid:` fullUrl becomes `Type/id`; a `urn:uuid:`
    reference that names no entry is an error (the server would refuse it anyway).
    """
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "collection":
        raise FhirServerError("expected a Bundle of type collection")
    targets: dict[str, str] = {}
    keys: list[tuple[str, str]] = []
    for index, entry in enumerate(bundle.get("entry") or []):
        resource = entry.get("resource")
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise FhirServerError(f"entry {index} has no resource")
        full_url = entry.get("fullUrl")
        rid = resource.get("id")
        if not rid and isinstance(full_url, str) and full_url.startswith(URN_UUID):
            rid = full_url.removeprefix(URN_UUID)
        if not isinstance(rid, str) or not rid:
            raise FhirServerError(f"entry {index} ({resource['resourceType']}) has no id")
        key = (resource["resourceType"], rid)
        if key in keys:
            raise FhirServerError(f"entry {index}: {key[0]}/{key[1]} appears twice")
        keys.append(key)
        if isinstance(full_url, str) and full_url.startswith(URN_UUID):
            targets[full_url] = f"{key[0]}/{key[1]}"

    entries = []
    for index, (entry, (rtype, rid)) in enumerate(zip(bundle["entry"], keys, strict=True)):
        resource = copy.deepcopy(entry["resource"])
        resource["id"] = rid
        _rewrite_references(resource, targets, f"entry {index} ({rtype}/{rid})")
        entries.append(
            {"resource": resource, "request": {"method": "PUT", "url": f"{rtype}/{rid}"}}
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _rewrite_references(node: Any, targets: Mapping[str, str], where: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and value.startswith(URN_UUID):
                if value not in targets:
                    raise FhirServerError(
                        f"{where}: reference {value} names no entry of the Bundle"
                    )
                node[key] = targets[value]
            else:
                _rewrite_references(value, targets, where)
    elif isinstance(node, list):
        for item in node:
            _rewrite_references(item, targets, where)


def searchable_types(base_url: str) -> dict[str, frozenset[str]]:
    """Resource type -> its search parameters, from the server's CapabilityStatement.

    sekmet stores any R4 resource type, but searches only the types listed here; a type missing
    from this list could be read back by id only.
    """
    response = httpx.get(f"{base_url}/metadata", headers=STRICT, timeout=10.0)
    response.raise_for_status()
    types: dict[str, frozenset[str]] = {}
    for rest in response.json().get("rest", []):
        for resource in rest.get("resource", []):
            names = frozenset(p["name"] for p in resource.get("searchParam", []))
            types[resource["type"]] = names
    return types


def seed(
    base_url: str, bundles: Iterable[Mapping[str, Any]], *, allow_unsearchable: bool = False
) -> None:
    """Load each patient Bundle as one atomic transaction (PUT, stable ids; re-running is harmless).

    Raises FhirServerError naming the resource types the server cannot search (unless
    `allow_unsearchable`: Synthea's CareTeam, Goal and SupplyDelivery are such types), or with the
    server's OperationOutcome text when it refuses a Bundle.
    """
    searchable = searchable_types(base_url)
    transactions = [to_transaction(bundle) for bundle in bundles]
    types = {e["resource"]["resourceType"] for t in transactions for e in t["entry"]}
    unsearchable = sorted(types - searchable.keys())
    if unsearchable and not allow_unsearchable:
        raise FhirServerError(
            f"sekmet {SEKMET_VERSION} has no search for: {', '.join(unsearchable)} "
            "(it would store them, but they could be read by id only)"
        )
    headers = {**STRICT, "Content-Type": FHIR_JSON}
    with httpx.Client(timeout=SEED_TIMEOUT_S, headers=headers) as client:
        for transaction in transactions:
            response = client.post(base_url, json=transaction)
            first = transaction["entry"][0]["request"]["url"] if transaction["entry"] else "empty"
            if response.status_code != 200:
                raise FhirServerError(
                    f"transaction starting with {first} refused: HTTP {response.status_code}: "
                    f"{outcome_text(response)}"
                )
            failed = [
                f"{request['request']['url']}: {reply.get('response', {}).get('status')}"
                for request, reply in zip(
                    transaction["entry"], response.json().get("entry", []), strict=False
                )
                if not str(reply.get("response", {}).get("status", "")).startswith(("200", "201"))
            ]
            if failed:
                raise FhirServerError(f"transaction starting with {first}: {'; '.join(failed)}")


def outcome_text(response: httpx.Response) -> str:
    """The diagnostics of an OperationOutcome answer (or the raw body when it is not one)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:2000]
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return response.text[:2000]
    issues = body.get("issue") or []
    texts = []
    for issue in issues:
        text = f"{issue.get('severity')} {issue.get('code')}: "
        text += str(issue.get("diagnostics") or issue.get("details", {}).get("text") or "")
        if issue.get("expression"):
            text += f" (at {', '.join(issue['expression'])})"
        texts.append(text)
    return "; ".join(texts) or response.text[:2000]


def analyze(db_path: Path) -> None:
    """Gather query-planner statistics after a bulk load (searches are orders of magnitude faster).

    Safe while the server runs: the database is in WAL mode, and ANALYZE bumps the schema
    version, so the server's connection reloads the schema and the new statistics with it.
    """
    connection = sqlite3.connect(db_path, timeout=30)
    try:
        connection.execute("ANALYZE")
        connection.commit()
    finally:
        connection.close()
