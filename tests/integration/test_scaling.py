"""Worker scaling on the sandbox, both layouts: counted over SSH, no event lost meanwhile, the
count kept across a plain `docker compose up -d`; the autoscaler following a real backlog."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
import yaml
from prefect.variables import Variable

from blocks.host_project import SCALE_FILE, compose_files_with_scale
from blocks.layouts import Role
from flows.scaling import ScalingError, autoscale, running, scale_workers, state_name
from tests.helpers import SHARED

pytestmark = SHARED  # the sandbox's shared stacks (tests/helpers.py)


def workers(host) -> list[str]:
    """The running replicas of the layout's worker service, as the host's Docker reports them."""
    service = host.stack.service(Role.WORKER)
    return sorted(r["ID"] for r in running(host.service_containers(service)))


@pytest.fixture()
def one_worker(layout_host):
    service = layout_host.stack.service(Role.WORKER)
    layout_host.compose("up", "-d", "--no-deps", "--scale", f"{service}=1", service, timeout=300)
    yield layout_host
    layout_host.compose("up", "-d", "--no-deps", "--scale", f"{service}=1", service, timeout=300)


def test_one_to_three_to_one_loses_no_event(one_worker, saved_layout_host):
    host = one_worker
    assert len(workers(host)) == 1
    sent: list[str] = []
    stop = threading.Event()

    def send() -> None:  # events keep arriving while replicas come and go
        while not stop.is_set():
            sent.append(host.send_event({"message": f"scaling {len(sent)}", "level": "error"}))
            time.sleep(0.05)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        up = scale_workers(saved_layout_host, 3)
        assert up == {"service": host.stack.service(Role.WORKER), "before": 1, "after": 3}
        assert len(workers(host)) == 3
        # the count is kept: the operator's own `docker compose up -d` of the whole stack
        assert SCALE_FILE in host.get(f"{host.project_dir}/{host.stack.operator_env_file}").decode()
        host.compose("up", "-d", timeout=600)
        assert len(workers(host)) == 3
        down = scale_workers(saved_layout_host, 1, stop_timeout=30)
        assert down["before"] == 3 and len(workers(host)) == 1
        again = scale_workers(saved_layout_host, 1)  # nothing to change
        assert again["before"] == again["after"] == 1
    finally:
        stop.set()
        sender.join()
    assert len(sent) > 20, "too few events were sent to prove anything"
    wait_processed(host, sent)


@pytest.mark.parametrize(
    ("replicas", "role", "message"),
    [
        (-1, "worker", r"replicas=-1 is outside 0\.\.24"),
        (25, "worker", r"replicas=25 is outside 0\.\.24 \(the block's max_workers"),
        (2, "web", r"role 'web' cannot be scaled; scalable roles of layout .*: worker"),
        (2, "cron", r"role 'cron' cannot be scaled"),
    ],
)
def test_bad_input_is_refused_and_nothing_changes(
    one_worker, saved_layout_host, replicas, role, message
):
    before = workers(one_worker)
    with pytest.raises(ScalingError, match=message):
        scale_workers(saved_layout_host, replicas, role=role)
    assert workers(one_worker) == before  # the same container, untouched


@contextlib.contextmanager
def operator_compose_file(host, name: str, services: dict):
    """An operator's own compose file with `services`, read by compose before sentry-ops' scale
    file (COMPOSE_FILE in the operator's env file); everything restored afterwards."""
    env_name = host.stack.operator_env_file
    env_path = f"{host.project_dir}/{env_name}"
    before = host.get(env_path) if host.exists(env_path) else None
    path = f"{host.project_dir}/{name}"
    host.put(path, yaml.safe_dump({"services": services}).encode(), mode=0o644)
    setting = host.env_setting("COMPOSE_FILE")
    files = (setting[0] if setting else compose_files_with_scale(None, host.listdir(
        host.project_dir), host.project_dir)).split(":")  # fmt: skip
    ours = [f for f in files if f.endswith(SCALE_FILE)]
    host.write_env({"COMPOSE_FILE": ":".join([f for f in files if f not in ours] + [path] + ours)},
                   env_name)  # fmt: skip
    try:
        yield
    finally:
        if before is None:
            host.run(["rm", "-f", env_path])
        else:
            host.put(env_path, before, mode=0o600)
        host.run(["rm", "-f", path])
        host._compose_context = None


def test_scaling_beside_the_guides_ha_recipe_and_refused_on_a_container_name(
    one_worker, saved_layout_host
):
    """The guide's HA recipe sets `deploy.replicas`; compose refuses a distinct `scale` beside it
    (every compose command on the host would then fail). A fixed container_name cannot run twice."""
    host = one_worker
    service = host.stack.service(Role.WORKER)
    with operator_compose_file(host, "ha-recipe.yml", {service: {"deploy": {"replicas": 1}}}):
        assert scale_workers(saved_layout_host, 2)["after"] == 2
        host.compose("up", "-d", timeout=600)  # the operator's plain up still works, still 2
        assert len(workers(host)) == 2
        assert scale_workers(saved_layout_host, 1)["after"] == 1
    with operator_compose_file(host, "named.yml", {service: {"container_name": "my-worker"}}):
        before = workers(host)
        with pytest.raises(ScalingError, match=r"cannot run 2 replicas: it sets container_name "
                           r"'my-worker'.*remove it from the compose file"):  # fmt: skip
            scale_workers(saved_layout_host, 2)
        assert workers(host) == before


def wait_processed(host, events: list[str], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    missing = list(events)
    while missing and time.monotonic() < deadline:
        missing = [e for e in missing if host.lookup_event(e) is None]
        time.sleep(0.5)
    assert missing == [], f"{len(missing)} of {len(events)} events were never processed"


def test_autoscale_scales_up_on_backlog_and_down_after_cooldown(one_worker, saved_layout_host):
    host = one_worker
    # a cooldown no run of this test outlasts (processing the backlog took over 8 s on a loaded
    # machine): the wait is then injected, by moving the autoscaler's last change back
    cooldown = 3600
    policy = {"min_replicas": 1, "max_replicas": 3, "backlog_per_worker": 10,
              "cooldown_seconds": cooldown}  # fmt: skip
    with pytest.raises(ScalingError, match="min_replicas=4 and max_replicas=3"):
        autoscale(saved_layout_host, min_replicas=4, max_replicas=3)
    assert len(workers(host)) == 1
    scale_workers(saved_layout_host, 0)  # nobody takes work: a backlog builds up
    sent = [host.send_event({"message": f"backlog {i}", "level": "error"}) for i in range(30)]
    assert host.queue_backlog().count >= 30
    up = autoscale(saved_layout_host, **policy)
    assert (up["before"], up["after"]) == (0, 3) and up["backlog"] >= 30, up
    assert len(workers(host)) == 3
    wait_processed(host, sent)
    assert host.queue_backlog().count == 0
    held = autoscale(saved_layout_host, **policy)
    assert held["after"] == 3 and "cooldown" in held["why"], held
    # the cooldown's clock is the last change's time the autoscaler keeps: moved a cooldown back
    state = Variable.get(state_name(host))
    moved = {**state, "changed_at": state["changed_at"] - cooldown}
    Variable.set(state_name(host), moved, overwrite=True)
    down = autoscale(saved_layout_host, **policy)
    assert (down["before"], down["after"]) == (3, 1), down
    assert len(workers(host)) == 1
