"""function.yaml / function-gpu.yaml and the deploy scripts, checked against the code."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import main
import pytest
import yaml
from tracker_state.state import SHAPE_TYPES

REPO = Path(__file__).resolve().parents[1]
SPECS = ["function.yaml", "function-gpu.yaml"]
CODE = "\n".join(
    path.read_text()
    for path in [*REPO.glob("*.py"), *REPO.glob("tracking/*.py"), *REPO.glob("tracker_state/*.py")]
)


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


@pytest.mark.parametrize("name", SPECS)
def test_cvat_reads_what_it_needs(name):
    spec = load(name)
    annotations = spec["metadata"]["annotations"]
    assert spec["metadata"]["namespace"] == "cvat"
    assert annotations["type"] == "tracker"
    assert annotations["name"]
    assert annotations["spec"] in ("", None)
    assert set(annotations["supported_shape_types"].split(",")) == set(SHAPE_TYPES)
    module, function = spec["spec"]["handler"].split(":")
    assert (module, function) == ("main", "handler")
    assert callable(main.handler) and callable(main.init_context)


@pytest.mark.parametrize("name", SPECS)
def test_environment_names_are_the_codes(name):
    env = {item["name"]: item["value"] for item in load(name)["spec"]["env"]}
    for variable in env:
        if variable != "PYTHONUNBUFFERED":
            assert f'"{variable}"' in CODE, f"{variable} is not read by the code"
    checkpoint = env["SAM2_CHECKPOINT"]
    directives = [d["value"] for d in load(name)["spec"]["build"]["directives"]["preCopy"]]
    assert any(checkpoint in step and "dl.fbaipublicfiles.com" in step for step in directives)
    assert env["SAM2_DEVICE"] == ("cuda" if "gpu" in name else "cpu")
    for variable in (
        "CVAT_FUNCTIONS_REDIS_HOST",
        "CVAT_FUNCTIONS_REDIS_PORT",
        "CVAT_FUNCTIONS_REDIS_PASSWORD",
    ):
        assert f'"{variable}"' in CODE


@pytest.mark.parametrize("name", SPECS)
def test_build_pins_match_requirements(name):
    pins = dict(
        line.split("==")
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    steps = " ".join(d["value"] for d in load(name)["spec"]["build"]["directives"]["preCopy"])
    for package, version in pins.items():
        assert f"{package}=={version}" in steps, f"{name} does not pin {package}=={version}"
    assert "sam2==1.1.0" in steps and "--no-build-isolation" in steps
    assert re.search(r"torch==[\d.]+", steps)


@pytest.mark.parametrize("name", SPECS)
def test_sized_for_many_objects_on_4k_frames(name):
    spec = load(name)["spec"]
    trigger = next(iter(spec["triggers"].values()))
    assert trigger["kind"] == "http"
    assert trigger["attributes"]["maxRequestBodySize"] >= 128 * 1024 * 1024
    assert int(spec["eventTimeout"].rstrip("s")) >= 30
    assert spec["platform"]["attributes"]["mountMode"] == "volume"
    limits = spec.get("resources", {}).get("limits", {})
    assert ("nvidia.com/gpu" in limits) == ("gpu" in name)
    if "gpu" in name:  # compiled warm-up in init_context outlasts Nuclio's 120 s default
        assert spec["readinessTimeoutSeconds"] >= 900


@pytest.mark.parametrize(
    ("script", "spec"), [("deploy_cpu.sh", SPECS[0]), ("deploy_gpu.sh", SPECS[1])]
)
def test_deploy_scripts_call_nuctl_the_cvat_way(tmp_path, script, spec):
    record = tmp_path / "calls"
    staged = tmp_path / "staged"
    fake = tmp_path / "nuctl"
    # Stands in for the nuctl binary (no Nuclio here): records its arguments and
    # copies the staged function folder it is asked to deploy.
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$@" >> "{record}"\n'
        'if [ "$1" = deploy ]; then\n'
        '  while [ $# -gt 0 ]; do [ "$1" = --path ] && cp -r "$2" '
        f'"{staged}"; shift; done\n'
        "fi\n"
    )
    fake.chmod(0o755)
    env = {**os.environ, "NUCTL": str(fake)}
    env.pop("CVAT_FUNCTIONS_REDIS_HOST", None)
    subprocess.run(["bash", str(REPO / script)], check=True, env=env, cwd=tmp_path)
    calls = record.read_text()
    assert "create project cvat" in calls
    assert "deploy --project-name cvat" in calls
    assert "--env CVAT_FUNCTIONS_REDIS_HOST=cvat_redis_ondisk" in calls
    assert "--env CVAT_FUNCTIONS_REDIS_PORT=6666" in calls
    assert '"network": "cvat_cvat"' in calls
    assert "--platform local" in calls
    assert sorted(p.name for p in staged.iterdir()) == [
        "function.yaml",
        "main.py",
        "model_handler.py",
        "tracker_state",
        "tracking",
    ]
    assert (staged / "function.yaml").read_text() == (REPO / spec).read_text()
