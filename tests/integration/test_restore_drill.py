"""Restore drills on the sandbox: a scratch stack beside production, through real SSH/S3/Prefect."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prefect.exceptions import ParameterTypeError

from blocks import backup_set, metrics, postgres
from blocks import scratch as scratch_stack
from blocks.backup_set import SetError
from blocks.backup_store import BackupStore
from blocks.scratch import scratch_of
from flows.backup import backup
from flows.health import health_check
from flows.restore_drill import DrillError, DrillStack, restore_drill
from infra import sandbox as sb
from infra.sandbox.prefect_blocks import (
    drill_host_from_connection,
    host_from_connection,
    store_from_connection,
)
from tests.helpers import SHARED
from tests.integration.test_scaling import wait_processed

pytestmark = SHARED  # the sandbox's shared stacks (tests/helpers.py)

DRILL = DrillStack(web_timeout=20)  # ports: production's + 100, computed by the drill
BROKEN = "sentry-ops-sandbox/sentry:24.3.0-broken"


def leftovers(project: str) -> list[str]:
    label = f"label=com.docker.compose.project={project}"
    ps = subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True)
    vols = subprocess.run(
        ["docker", "volume", "ls", "-q", "--filter", label], capture_output=True, text=True
    )
    return ps.stdout.split() + vols.stdout.split()


def prod_state(host) -> tuple[dict, dict]:
    with postgres.psql(host) as db:
        return postgres.row_counts(db), postgres.table_checksums(db)


def progress_artifacts(backup_id: str) -> dict[str, float]:
    """The progress artifacts that name this backup: what -> percent."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"])), limit=200
        )
    return {
        a.description.split(" of ")[0]: float(a.data)
        for a in found
        if a.description and backup_id in a.description
    }


def test_drill_of_a_fresh_backup_passes_and_leaves_production_alone(
    sentry_host, saved_host, store_name, seeded
):
    sentry_host.compose("stop", "sentry-cron", "sentry-worker")  # keep production still
    try:
        taken = backup(saved_host, store_name)
        before = prod_state(sentry_host)
        result = restore_drill(saved_host, store_name, drill=DRILL)
        after = prod_state(sentry_host)
    finally:
        sentry_host.compose("start", "sentry-cron", "sentry-worker")
    assert result["passed"] and result["backup_id"] == taken["backup_id"]
    assert result["rto_seconds"] > 0 and 0 <= result["rpo_seconds"] < 600
    # RTO (issue 27, item 4): from the first restoring step to checked-healthy, the lock wait
    # a stage of its own before it: the stages between the two sum to the RTO
    names = [step["name"] for step in result["steps"]]
    first, last = names.index("wait for the engine and host locks") + 1, names.index("teardown")
    restoring = sum(step.get("seconds") or 0 for step in result["steps"][first:last])
    assert abs(result["rto_seconds"] - restoring) <= 3, (result["rto_seconds"], result["steps"])
    # each restore showed its progress (bytes read against the object's size), finished
    progress = progress_artifacts(result["backup_id"])
    assert {"restore postgres", "restore volume:files"} <= set(progress), progress
    assert all(pct == 100.0 for pct in progress.values()), progress
    # the drill's result is kept beside the set: the store's metrics read it from there
    (facts,) = metrics.read_facts(BackupStore.load(store_name))
    assert facts.drill_ok is True and facts.drill_rto == result["rto_seconds"]
    assert facts.sets == {"verified": 1}
    assert after == before  # production's data is unchanged
    assert all(c["status"] == "ok" for c in health_check(saved_host))  # and it is healthy
    assert leftovers(f"{sentry_host.project}-drill") == []
    assert not Path(f"{sentry_host.project_dir}-drill").exists()


def drill_host_leftovers() -> list[str]:
    """Containers and volumes on the drill host's Docker engine (it holds nothing else)."""
    ps = sb.drill_docker("ps", "-aq").stdout.split()
    return ps + sb.drill_docker("volume", "ls", "-q").stdout.split()


def test_drill_on_each_layout_as_the_deployment_schedules_it(
    layout, saved_layout_host, store_name, layout_host
):
    """The deployment's own parameters (prefect.yaml: host and store only); self-hosted on the
    drill host, since its volumes are external. Nothing is left on either host. The newest
    event comes back through the restored Sentry's API, with its payload from the restored
    nodestore (Postgres, or SeaweedFS with its key file)."""
    wait_processed(layout_host, [layout_host.send_event({"message": "drill me", "level": "error"})])
    taken = backup(saved_layout_host, store_name)
    drill_host = "drill-host" if layout == "self-hosted" else None
    if drill_host:  # a clean drill host: its engine starts with no image at all
        images = sb.drill_docker("image", "ls", "-aq").stdout.split()
        if images:
            sb.drill_docker("image", "rm", "-f", *set(images))
        assert sb.drill_docker("image", "ls", "-aq").stdout.split() == []
    result = restore_drill(saved_layout_host, store_name, drill_host=drill_host)
    assert result["passed"] and result["backup_id"] == taken["backup_id"]
    checks = {c["name"]: c for c in result["checks"]}
    assert checks["newest event through Sentry's API"]["status"] == "ok", checks
    steps = {s["name"]: s for s in result["steps"]}
    if drill_host:  # every image it ran came from production, measured
        assert steps["images"]["status"] == "done"
        assert re.search(r"copied from production, \d+ MB in", steps["images"]["detail"])
    else:
        assert steps["images"]["detail"] == "production's own engine"
    assert leftovers(f"{layout_host.project}-drill") == []
    assert drill_host_leftovers() == []


def reseal(store, key: str, change) -> None:
    """Change a manifest in the bucket and seal it again with the store's key."""
    raw = json.loads(store.get_bytes(key))
    raw.pop("seal")
    change(raw)
    manifest = backup_set.BackupManifest.model_validate(raw)
    store.put_bytes(key, backup_set.sealed_json(store, manifest))


def test_a_flipped_byte_fails_at_verification_before_any_restore(
    sentry_host, saved_host, store_name, sandbox
):
    taken = backup(saved_host, store_name)
    store = store_from_connection(sandbox, prefix=store_name)
    key = backup_set.load(store, taken["host_id"], taken["backup_id"]).object("postgres").key
    data = bytearray(store.open(key).read())
    data[-100] ^= 0x40
    store.put_bytes(key, bytes(data))
    with pytest.raises(DrillError, match=r"verification \(postgres: size .* differs"):
        restore_drill(saved_host, store_name, drill=DRILL)
    assert not Path(f"{sentry_host.project_dir}-drill").exists()  # nothing was created
    assert leftovers(f"{sentry_host.project}-drill") == []


def test_a_backup_without_manifest_is_never_picked(saved_host, store_name, sandbox):
    taken = backup(saved_host, store_name)
    store = store_from_connection(sandbox, prefix=store_name)
    host_id = taken["host_id"]
    newer = backup_set.new_backup_id(host_id, dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    half = backup_set.folder(store, host_id, newer) + "postgres.dump.enc"
    store.put_bytes(half, b"half a dump")  # no manifest
    result = restore_drill(saved_host, store_name, drill=DRILL)
    assert result["backup_id"] == taken["backup_id"]
    with pytest.raises(SetError, match="has no manifest: incomplete, never restored"):
        restore_drill(saved_host, store_name, backup_id=newer, drill=DRILL)


def test_a_failing_drill_tears_down_unless_asked_to_keep(
    sentry_host, saved_host, store_name, sandbox
):
    taken = backup(saved_host, store_name)
    store = store_from_connection(sandbox, prefix=store_name)
    reseal(store, taken["manifest"], lambda m: m["images"].update(sentry=BROKEN))  # never healthy
    scratch = f"{sentry_host.project}-drill"
    drill = DRILL.model_copy(update={"allowed_images": [BROKEN]})

    with pytest.raises(DrillError, match=r"/_health/ \(0 no answer"):
        restore_drill(saved_host, store_name, drill=drill)
    assert leftovers(scratch) == []
    assert not Path(f"{sentry_host.project_dir}-drill").exists()

    with pytest.raises(DrillError, match=r"/_health/"):
        restore_drill(saved_host, store_name, drill=drill, keep_on_failure=True)
    try:
        assert leftovers(scratch) != []  # kept for inspection
    finally:
        subprocess.run(
            [
                "docker",
                "compose",
                "--project-directory",
                f"{sentry_host.project_dir}-drill",
                "-p",
                scratch,
                "down",
                "-v",
                "-t",
                "1",
            ],
            capture_output=True,
        )
        subprocess.run(["rm", "-rf", f"{sentry_host.project_dir}-drill"])
    assert leftovers(scratch) == []


HOSTILE = [
    ("x\n    privileged: true", "is not an image name"),
    ("alpine:3 ", "is not an image name"),
    ("sentry-ops-sandbox/services:latest", "is not the one production's compose file uses"),
]


def test_a_hostile_manifest_image_is_refused_before_anything_is_written(
    sentry_host, saved_host, store_name, sandbox
):
    taken = backup(saved_host, store_name)  # one set, resealed with each hostile image in turn
    store = store_from_connection(sandbox, prefix=store_name)
    for image, message in HOSTILE:
        # sealed with the store's own key: someone who has the key still cannot run any image
        reseal(store, taken["manifest"], lambda m, image=image: m["images"].update(sentry=image))
        with pytest.raises(DrillError, match=message):
            restore_drill(saved_host, store_name, drill=DRILL)
        assert not Path(f"{sentry_host.project_dir}-drill").exists(), image
        assert leftovers(f"{sentry_host.project}-drill") == [], image


@pytest.mark.parametrize(
    ("drill", "message"),
    [
        ({"port_offset": 0}, "greater than or equal to 1"),
        ({"suffix": "x/../../opt/sentry"}, "should match pattern"),
    ],
)
def test_bad_drill_parameters_are_refused_before_anything_is_written(
    sentry_host, saved_host, store_name, drill, message
):
    # Prefect validates the parameters against DrillStack's fields before the flow's body runs
    with pytest.raises(ParameterTypeError, match=message):
        restore_drill(saved_host, store_name, drill=drill)
    assert not Path(f"{sentry_host.project_dir}-drill").exists()
    assert leftovers(f"{sentry_host.project}-drill") == []


class CuttingProxy:
    """A TCP proxy to the S3 endpoint that cuts the response to the `nth` GET of the dump (a
    request line naming `/postgres.dump`) after `limit` bytes: a real S3 read failing mid-object.
    Counted by request, not by connection: boto3 keeps connections alive, so one connection may
    carry several reads (SeaweedFS), or each read its own."""

    def __init__(self, upstream: int, nth: int, limit: int = 4 << 20) -> None:
        self.upstream, self.nth, self.limit = upstream, nth, limit
        self.gets, self.cut = 0, False
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            armed: dict[str, int] = {}  # this connection's response to cut: bytes sent so far
            for args in ((client, upstream, False, armed), (upstream, client, True, armed)):
                threading.Thread(target=self.pipe, args=args, daemon=True).start()

    def pipe(self, src: socket.socket, dst: socket.socket, to_client: bool, armed: dict) -> None:
        try:
            while data := src.recv(65536):
                if (
                    not to_client
                    and data.startswith(b"GET ")
                    and b"/postgres.dump" in (data.split(b"\r\n", 1)[0])
                ):
                    with self.lock:
                        self.gets += 1
                        if self.gets == self.nth:
                            armed["sent"] = 0
                dst.sendall(data)
                if to_client and "sent" in armed:
                    armed["sent"] += len(data)
                    if armed["sent"] > self.limit:
                        self.cut = True
                        break
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_an_s3_error_mid_restore_fails_within_its_timeout_and_removes_the_scratch_stack(
    sentry_host, saved_host, store_name, sandbox, seeded
):
    taken = backup(saved_host, store_name)
    # verification reads the dump once (the 1st large response), the restore again (the 2nd)
    proxy = CuttingProxy(int(sandbox["s3"]["endpoint_url"].rsplit(":", 1)[1]), nth=2)
    info = json.loads(json.dumps(sandbox))
    info["s3"]["endpoint_url"] = f"http://127.0.0.1:{proxy.port}"
    store_from_connection(info, prefix=store_name).save(f"{store_name}-cut", overwrite=True)
    started = time.monotonic()
    with pytest.raises(DrillError, match="restore"):
        restore_drill(saved_host, f"{store_name}-cut", backup_id=taken["backup_id"], drill=DRILL)
    assert proxy.cut, "the restore's read was never cut: the test tested nothing"
    assert time.monotonic() - started < 300
    assert leftovers(f"{sentry_host.project}-drill") == []
    assert not Path(f"{sentry_host.project_dir}-drill").exists()
    proxy.server.close()


def test_a_killed_drill_is_cleaned_up_by_the_next_one(
    sentry_host, saved_host, store_name, sandbox, seeded
):
    from prefect.settings import PREFECT_API_URL

    taken = backup(saved_host, store_name)
    project = f"{sentry_host.project}-drill"
    code = (
        "from flows.restore_drill import restore_drill; "
        f"restore_drill({saved_host!r}, {store_name!r}, backup_id={taken['backup_id']!r})"
    )
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    drill = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=sb.REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while not leftovers(project):  # its scratch stack exists: kill it mid-way
        assert drill.poll() is None, "the drill ended before it could be killed"
        assert time.monotonic() < deadline, "the drill never started its scratch stack"
        time.sleep(0.1)
    drill.kill()
    drill.wait()
    assert leftovers(project) != []  # a killed drill leaves its scratch stack behind
    result = restore_drill(saved_host, store_name, backup_id=taken["backup_id"], drill=DRILL)
    assert result["passed"]
    assert leftovers(project) == [] and not Path(f"{sentry_host.project_dir}-drill").exists()


def test_a_suffix_naming_another_stack_is_refused_and_that_stack_left_alone(
    sentry_host, saved_host, store_name
):
    """drill.suffix="staging" names `<project dir>-staging`: a real stack's directory (no drill's
    marker in it) is refused before anything is touched, not torn down."""
    other = scratch_of(sentry_host, None, DrillStack(suffix="staging")).project_dir
    assert not sentry_host.exists(other)
    sentry_host.makedirs(other)
    sentry_host.put(f"{other}/docker-compose.yml", b"services: {}\n", mode=0o644)
    try:
        backup(saved_host, store_name)
        with pytest.raises(DrillError, match=rf"refusing to touch {re.escape(other)}: it has no "
                           r"\.sentry-ops-drill"):  # fmt: skip
            restore_drill(saved_host, store_name, drill=DrillStack(suffix="staging"))
        assert sentry_host.get(f"{other}/docker-compose.yml") == b"services: {}\n"
    finally:
        sentry_host.remove_tree(other)


def test_the_same_engine_is_known_by_its_id_not_by_the_ssh_address(sandbox, sentry_host):
    """Another sshd on the same machine reaches the same engine: one engine (its volumes and
    container names are production's); the drill host's second dockerd is another."""
    other_route = host_from_connection({**sandbox, "ssh": sandbox["own_ssh"]})
    assert other_route.transport.target != sentry_host.transport.target
    assert scratch_stack.same_engine(sentry_host, other_route)
    assert not scratch_stack.same_engine(sentry_host, drill_host_from_connection(sandbox))


def test_a_device_bound_volume_and_an_external_network_are_refused_before_anything_runs(
    sentry_host, saved_host, store_name
):
    """A set whose compose config binds a volume to a host path and joins an external network:
    a scratch copy on production's engine would start on production's files and join its
    network; names differ, so only the resolved config tells."""
    device = f"{sentry_host.project_dir}-files-on-disk"
    override = (
        "services:\n"
        "  sentry-cron:\n"
        "    network_mode: !reset null\n"
        "    networks: [shared]\n"
        "networks:\n"
        "  shared: {external: true, name: sentry-ops-test-shared}\n"
        "volumes:\n"
        f"  sentry_data:\n    driver_opts: {{type: none, o: bind, device: {device}}}\n"
    )
    path = f"{sentry_host.project_dir}/docker-compose.override.yml"
    assert not sentry_host.exists(path)
    sentry_host.put(path, override.encode(), mode=0o644)
    try:
        backup(saved_host, store_name)  # the set's config carries the override
        with pytest.raises(DrillError) as refused:
            restore_drill(saved_host, store_name, drill=DRILL)
        message = str(refused.value)
        assert f"host paths ['{device}']" in message, message
        assert "external networks ['sentry-ops-test-shared']" in message, message
        assert "nothing was started" in message
        assert leftovers(f"{sentry_host.project}-drill") == []
        assert not Path(f"{sentry_host.project_dir}-drill").exists()
    finally:
        sentry_host.remove_tree(path)


def test_a_scratch_port_something_listens_on_is_refused(sentry_host, saved_host, store_name):
    """Port offset 100 moves the web port onto one a foreign process holds: the drill's health
    check would ask that process, so the drill refuses before starting anything."""
    backup(saved_host, store_name)
    squatter = socket.create_server(("127.0.0.1", sentry_host.web_port + 100))
    try:
        with pytest.raises(DrillError, match=rf"host ports \['{sentry_host.web_port + 100}'\] "
                           "that something already listens on"):  # fmt: skip
            restore_drill(saved_host, store_name, drill=DRILL)
        assert leftovers(f"{sentry_host.project}-drill") == []
    finally:
        squatter.close()


def test_a_drill_its_engine_has_no_room_for_is_refused_before_anything_is_written(
    sentry_host, saved_host, store_name, tmp_path
):
    """Production's Docker data on a 64 MB disk (a tmpfs): a same-host drill would fill the
    disk production writes to, so it is refused with both figures, nothing written."""
    small = tmp_path / "docker-data"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(small)], check=True)
    try:
        backup(saved_host, store_name)
        host = sentry_host.model_copy(update={"docker_data_dir": str(small)})
        with pytest.raises(DrillError, match=rf"no room for the drill of .* GB needed, 0\.1 GB "
                           rf"free in {re.escape(str(small))}.*drill_host"):  # fmt: skip
            restore_drill(host, store_name, drill=DRILL)
        assert not Path(f"{sentry_host.project_dir}-drill").exists()
        assert leftovers(f"{sentry_host.project}-drill") == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
