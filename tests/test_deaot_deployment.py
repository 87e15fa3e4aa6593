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
    text = (DEAOT_DIR / name).read_text()
    spec = yaml.safe_load(text)
    # Its comment names the script that deploys this spec, not the other one.
    assert ("deploy_cpu.sh" in text) == ("gpu" not in name) != ("deploy_gpu.sh" in text)
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


def test_the_staged_deaot_function_runs_under_nuclios_python_runtime(
    tmp_path, present_checkpoint, checkpoint_dir, own_redis
):
    """The folder our script stages for CVAT's deploy scripts, run by the stand-in for
    Nuclio's Python runtime with the spec's environment: one startup line naming DeAOT,
    one line per call, nothing printed beside the log (no deaotpy notice, no warning)."""
    import base64
    import json

    import numpy as np
    from conftest import davis_sequence, frame_paths, ground_truth
    from nuclio_runner import run_function
    from tracking.deaot_model import make_random_deaot_checkpoint
    from tracking.shapes import encode_shape

    stage_dir = tmp_path / "functions"
    env = {**os.environ, "TRACKER_BACKEND": "deaot", "STAGE_DIR": str(stage_dir)}
    subprocess.run(["bash", str(REPO / "deploy_cpu.sh")], check=True, env=env, capture_output=True)
    folder = stage_dir / "deaott_tracker" / "nuclio"
    spec_env = env_of(yaml.safe_load((folder / "function.yaml").read_text()))
    deaot_checkpoint = make_random_deaot_checkpoint(checkpoint_dir / "deaott_runtime.pth")
    runtime_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CVAT_", "SAM2_"))},
        **spec_env,
        "PYTHONPATH": "",
        "DEAOT_CHECKPOINT": str(deaot_checkpoint),
        "SAM2_CHECKPOINT": str(present_checkpoint),
        "SAM2_HYDRA_OVERRIDES": "++model.image_size=256",
        "CVAT_FUNCTIONS_REDIS_HOST": "127.0.0.1",
        "CVAT_FUNCTIONS_REDIS_PORT": str(own_redis.port),
    }
    sequence = davis_sequence("dog")
    frames = [base64.b64encode(p.read_bytes()).decode() for p in frame_paths(sequence)[:2]]
    mask = {"type": "mask", "points": encode_shape("mask", ground_truth(sequence))}
    box = {"type": "rectangle", "points": [260.0, 120.0, 560.0, 420.0]}

    first = {"image": frames[0], "shapes": [mask, box], "states": []}
    logs, responses, printed = run_function(folder, runtime_env, [first], tmp_path)
    states = json.loads(responses[0]["body"])["states"]
    second = {"image": frames[1], "shapes": [None, None], "states": states}
    logs, responses, printed = run_function(folder, runtime_env, [second], tmp_path)
    assert [r["status_code"] for r in responses] == [200]
    shapes = json.loads(responses[0]["body"])["shapes"]
    assert [s["type"] for s in shapes] == ["mask", "rectangle"]
    assert np.all(np.asarray(shapes[1]["points"]) >= 0)
    startup = [line for line in logs if line.startswith("DeAOT tracker ready")]
    assert len(startup) == 1
    assert "model deaott" in startup[0] and "on cpu, float32" in startup[0]
    assert "rectangles become masks through SAM 2's box prompt" in startup[0]
    assert f"redis at 127.0.0.1:{own_redis.port}" in startup[0]
    assert any(line.startswith("tracked 0 started, 2 continued") for line in logs)
    assert printed.strip() == "", printed[-2000:]
    assert len(logs) == len(set(logs))


def test_cpu_and_gpu_specs_staged_into_one_folder_are_both_kept(tmp_path):
    stage_dir = tmp_path / "functions"
    env = {**os.environ, "TRACKER_BACKEND": "deaot", "STAGE_DIR": str(stage_dir)}
    for script in ("deploy_cpu.sh", "deploy_gpu.sh"):
        subprocess.run(["bash", str(REPO / script)], check=True, env=env, capture_output=True)
    folder = stage_dir / "deaott_tracker" / "nuclio"
    assert files_under(folder) == FUNCTION_FILES
    for name in SPECS:
        check_deaot_spec(yaml.safe_load((folder / name).read_text()), gpu="gpu" in name)
