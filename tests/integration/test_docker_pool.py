"""The production option: a Docker work pool (prefect-docker) running the flows' image built from
infra/flows-image on the local engine (no push). Setup makes the pool and the deployments; a real
Docker worker runs one deployment in a container of that image, which completes. It reaches only
the Prefect API and the S3 endpoint, on 127.0.0.1 (host networking), so it runs in the process
beside the shared one."""

from __future__ import annotations

import json
import uuid

from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from deployments.setup import main
from infra import sandbox as sb
from tests.helpers import run_worker_once


def test_a_deployment_runs_in_the_flows_image_on_a_docker_work_pool(sandbox, prefect_api, tmp_path):
    image = sb.ensure_flows_image()
    tag = uuid.uuid4().hex[:6]
    pool, store = f"docker-{tag}", f"dstore-{tag}"
    config = sb.setup_config(
        sandbox, tmp_path, {f"d-{tag}": "guide"}, store=store, work_pool=pool, docker_image=image
    )
    assert main(["--config", str(config)]) == 0
    with get_client(sync_client=True) as client:
        assert client.read_work_pool(pool).type == "docker"
        deployment = client.read_deployment_by_name(f"list-backups/{store}")
    assert deployment.job_variables["image"] == image
    assert deployment.pull_steps[0]["prefect.deployments.steps.set_working_directory"] == {
        "directory": "/opt/sentry-ops"
    }

    run = run_deployment(f"list-backups/{store}", timeout=0)
    log = run_worker_once(pool, "docker", prefect_api, timeout=600)
    with get_client(sync_client=True) as client:
        finished = client.read_flow_run(run.id)
    assert finished.state.is_completed(), (finished.state, log)
    # it ran in a container of the flows' image (the worker records the container as the run's
    # infrastructure), not on this machine
    container = finished.infrastructure_pid.rsplit(":", 1)[-1]
    inspected = json.loads(sb.sh("docker", "inspect", container).stdout)[0]
    sb.sh("docker", "rm", "-f", container, check=False)
    assert inspected["Config"]["Image"] == image
    assert inspected["State"]["ExitCode"] == 0
    assert inspected["HostConfig"]["NetworkMode"] == "host"
