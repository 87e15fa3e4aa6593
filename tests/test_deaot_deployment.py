"""The DeAOT function's specs (deploy/deaot/) and its deployment by our scripts and by
CVAT's deploy loop over a staged folder, beside the SAM 2 function. nuctl is the
recording stand-in of test_deployment (no Nuclio here)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import yaml
from test_deployment import (
    CVAT_DEPLOY_LOOP,
    FUNCTION_FILES,
    REPO,
    SPECS,
    build_steps,
    check_spec,
    env_of,
    fake_nuctl,
    files_under,
)
from tracking.deaot_model import DEAOT_MODELS, DeaotSettings

DEAOT_DIR = REPO / "deploy" / "deaot"
# PRE_YTB_DAV checkpoints, as aot-benchmark's MODEL_ZOO.md links them on Google Drive.
DRIVE_IDS = {
    "deaott": "1ThWIZQS03cYWx1EKNN8MIMnJS5eRowzr",
    "deaots": "1YwIAV5tBtn5spSFxKLBQBEQGwPHyQlHi",
    "deaotb": "1BHxsonnvJXylqHlZ1zJHHc-ymKyq-CFf",
    "deaotl": "18elNz_wi9JyVBcIUYKhRdL08MA-FqHD5",
    "r50_deaotl": "1QoChMkTVxdYZ_eBlZhK2acq9KMQZccPJ",
    "swinb_deaotl": "1g4E-F0RPOx9Nd6J7tU9AE1TjsouL4oZq",
}


def check_deaot_spec(spec: dict, gpu: bool, model: str = "deaott") -> None:
    check_spec(spec, gpu)  # everything CVAT reads, SAM 2 tiny for boxes, the pins
    env = env_of(spec)
    assert env["TRACKER_BACKEND"] == "deaot"
    assert env["DEAOT_MODEL"] == model
    settings = DeaotSettings.from_env(env)  # every DEAOT_* value is one the code takes
    assert settings.model == model and settings.long_term_gap >= 1
    steps = " ".join(build_steps(spec))
    makefile = (REPO / "Makefile").read_text()
    pin = re.search(r"DEAOTPY_VERSION \?= ([\d.]+)", makefile).group(1)
    assert f"pip install --no-cache-dir --no-deps deaotpy=={pin}" in steps
    fetch = f"gdown --quiet {DRIVE_IDS[model]} -O {env['DEAOT_CHECKPOINT']}"
    assert fetch in steps, fetch
    assert model in env["DEAOT_CHECKPOINT"]
    name = spec["metadata"]["name"]
    assert name == f"pth-{model.replace('_', '-')}-tracker"
    assert model in spec["metadata"]["annotations"]["name"]


@pytest.mark.parametrize("name", SPECS)
def test_shipped_deaot_specs(name):
    spec = yaml.safe_load((DEAOT_DIR / name).read_text())
    check_deaot_spec(spec, gpu="gpu" in name)
    sam2 = yaml.safe_load((REPO / "serverless/sam2_tracker/nuclio" / name).read_text())
    assert spec["metadata"]["name"] != sam2["metadata"]["name"]  # both in one CVAT
    assert spec["spec"]["build"]["image"] != sam2["spec"]["build"]["image"]


@pytest.mark.parametrize(
    ("script", "spec"), [("deploy_cpu.sh", "function.yaml"), ("deploy_gpu.sh", "function-gpu.yaml")]
)
@pytest.mark.parametrize("model", DEAOT_MODELS)
def test_our_deploy_scripts_deploy_the_chosen_deaot_model(tmp_path, script, spec, model):
    nuctl, record, staged = fake_nuctl(tmp_path)
    env = {**os.environ, "NUCTL": str(nuctl), "TRACKER_BACKEND": "deaot", "DEAOT_MODEL": model}
    subprocess.run(["bash", str(REPO / script)], check=True, env=env, cwd=tmp_path)
    assert "--env CVAT_FUNCTIONS_REDIS_HOST=cvat_redis_ondisk" in record.read_text()
    assert files_under(staged / "0") == FUNCTION_FILES - {"function-gpu.yaml"}
    deployed = yaml.safe_load((tmp_path / "spec-0.yaml").read_text())
    check_deaot_spec(deployed, gpu="gpu" in spec, model=model)


@pytest.mark.parametrize("spec", SPECS)
def test_cvats_deploy_loop_deploys_both_functions_from_a_staged_folder(tmp_path, spec):
    script = "deploy_gpu.sh" if "gpu" in spec else "deploy_cpu.sh"
    stage_dir = tmp_path / "functions"
    for backend in ("sam2", "deaot"):
        env = {**os.environ, "TRACKER_BACKEND": backend, "STAGE_DIR": str(stage_dir)}
        subprocess.run(["bash", str(REPO / script)], check=True, env=env, capture_output=True)
    _, record, staged = fake_nuctl(tmp_path)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    subprocess.run(
        ["bash", "-c", CVAT_DEPLOY_LOOP, "deploy", str(stage_dir), spec, "CVAT_FUNCTIONS_REDIS_"],
        check=True,
        env=env,
    )
    deploys = [line for line in record.read_text().splitlines() if line.startswith("deploy")]
    assert len(deploys) == 2
    names = set()
    for index in range(2):
        deployed = yaml.safe_load((tmp_path / f"spec-{index}.yaml").read_text())
        names.add(deployed["metadata"]["name"])
        assert files_under(staged / str(index)) == FUNCTION_FILES - {"function-gpu.yaml"} - {
            "function.yaml"
        } | {spec}
        if env_of(deployed).get("TRACKER_BACKEND") == "deaot":
            check_deaot_spec(deployed, gpu="gpu" in spec)
        else:
            check_spec(deployed, gpu="gpu" in spec)
    assert names == {"pth-facebookresearch-sam2-tracker", "pth-deaott-tracker"}


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TRACKER_BACKEND", "cutie", "sam2 or deaot"),
        ("DEAOT_MODEL", "aott", "deaott, deaots, deaotb"),
    ],
)
def test_unknown_backends_and_models_are_refused(tmp_path, variable, value, message):
    nuctl, record, _ = fake_nuctl(tmp_path)
    env = {**os.environ, "NUCTL": str(nuctl), "TRACKER_BACKEND": "deaot", variable: value}
    result = subprocess.run(
        ["bash", str(REPO / "deploy_cpu.sh")], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2 and message in result.stderr
    assert not record.exists()
