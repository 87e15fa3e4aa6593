"""The function folder, its specs and the deploy scripts (ours and CVAT's), checked
against the code; and the staged function run under a stand-in for Nuclio's Python
runtime (tests/nuclio_runner.py), with CVAT's Redis variables."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import main
import pytest
import yaml
from conftest import SMALL_IMAGE_SIZE, davis_sequence, frame_paths, ground_truth
from cvat_sdk.masks import encode_mask
from nuclio_runner import run_function
from tracker_state.state import SHAPE_TYPES
from tracking.model_loading import CHECKPOINT_BASE_URL, OFFICIAL_CHECKPOINTS, OFFICIAL_CHECKSUMS

REPO = Path(__file__).resolve().parents[1]
SERVERLESS = REPO / "serverless"  # the path the README gives CVAT's deploy scripts
FUNCTION_DIR = SERVERLESS / "sam2_tracker" / "nuclio"
SPECS = ["function.yaml", "function-gpu.yaml"]
SIZES = ["tiny", "small", "base_plus", "large"]
CVAT_TIMEOUT_SECONDS = 120  # CVAT_NUCLIO_DEFAULT_TIMEOUT
SAM2_SHA256 = re.search(r"SAM2_SHA256 := ([0-9a-f]{64})", (REPO / "Makefile").read_text()).group(1)
CODE = "\n".join(path.read_text() for path in FUNCTION_DIR.rglob("*.py"))
# What the image needs, and nothing else: Nuclio copies the whole folder into the build.
FUNCTION_FILES = {
    "function.yaml",
    "function-gpu.yaml",
    "main.py",
    "model_handler.py",
    *(f"tracking/{p.name}" for p in (FUNCTION_DIR / "tracking").glob("*.py")),
    *(f"tracker_state/{p.name}" for p in (FUNCTION_DIR / "tracker_state").glob("*.py")),
}


def load(name: str) -> dict:
    return yaml.safe_load((FUNCTION_DIR / name).read_text())


def env_of(spec: dict) -> dict[str, str]:
    """Plain values (a value from a Kubernetes secret has none: it maps to None)."""
    return {item["name"]: item.get("value") for item in spec["spec"]["env"]}


def build_steps(spec: dict) -> list[str]:
    return [d["value"] for d in spec["spec"]["build"]["directives"]["preCopy"]]


def files_under(folder: Path) -> set[str]:
    """Files Nuclio would copy into the image (bytecode caches aside: `make` keeps them
    out of the folder, and our scripts strip them)."""
    return {
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def check_spec(spec: dict, gpu: bool, size: str = "tiny") -> None:
    """Everything CVAT and Nuclio read from a spec, and its checkpoint for ``size``."""
    annotations = spec["metadata"]["annotations"]
    assert spec["metadata"]["namespace"] == "cvat"
    assert spec["metadata"]["labels"]["nuclio.io/project-name"] == "cvat"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", spec["metadata"]["name"])
    assert annotations["type"] == "tracker"
    assert annotations["name"]
    assert annotations["spec"] in ("", None)
    assert set(annotations["supported_shape_types"].split(",")) == set(SHAPE_TYPES)
    assert spec["spec"]["handler"] == "main:handler"
    assert callable(main.handler) and callable(main.init_context)

    env = env_of(spec)
    for variable in env:
        if re.fullmatch(r"CVAT_FUNCTIONS_REDIS_(HOST|PORT|PASSWORD)", variable):
            continue  # read by prefix (tracker_state.config), checked in its own test
        if variable != "PYTHONUNBUFFERED":
            assert f'"{variable}"' in CODE, f"{variable} is not read by the code"
    assert env["SAM2_DEVICE"].split(":")[0] == ("cuda" if gpu else "cpu")
    # The checkpoint the image fetches is the official one of the configured model.
    checkpoint = f"sam2.1_hiera_{size}.pt"
    assert OFFICIAL_CHECKPOINTS[env["SAM2_MODEL_CFG"]] == checkpoint
    assert env["SAM2_CHECKPOINT"].endswith("/" + checkpoint)
    fetch = (
        f"curl -fsSL -o {env['SAM2_CHECKPOINT']} {CHECKPOINT_BASE_URL}/{checkpoint} && "
        f"echo '{OFFICIAL_CHECKSUMS[checkpoint]}  {env['SAM2_CHECKPOINT']}' | sha256sum -c -"
    )
    assert any(fetch in step for step in build_steps(spec)), fetch
    assert resources.files("sam2").joinpath(env["SAM2_MODEL_CFG"]).is_file()

    pins = dict(
        line.split("==")
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    steps = " ".join(build_steps(spec))
    for package, version in pins.items():
        assert f"{package}=={version}" in steps, f"the spec does not pin {package}=={version}"
    assert f"'sam2==1.1.0 --hash=sha256:{SAM2_SHA256}" in steps
    assert "--no-build-isolation --no-deps --require-hashes" in steps
    assert re.search(r"torch==[\d.]+", steps)
    assert "build-essential" not in steps  # nothing is compiled
    assert "nuclio-sdk" not in steps  # Nuclio's runtime brings its own

    trigger = next(iter(spec["spec"]["triggers"].values()))
    assert trigger["kind"] == "http"
    assert trigger["attributes"]["maxRequestBodySize"] >= 128 * 1024 * 1024
    # numWorkers for Nuclio >= 1.13, maxWorkers for older ones, and the function's own
    # thread split: the same number.
    assert trigger["numWorkers"] == trigger["maxWorkers"] == int(env["SAM2_WORKERS"])
    assert trigger["numWorkers"] == (1 if gpu else 2)
    # Calls queue for a worker as long as CVAT waits, and a slow call is never cut short
    # by Nuclio (that restarts the worker): both past CVAT's own timeout.
    assert trigger["workerAvailabilityTimeoutMilliseconds"] >= CVAT_TIMEOUT_SECONDS * 1000
    assert int(spec["spec"]["eventTimeout"].rstrip("s")) > 2 * CVAT_TIMEOUT_SECONDS
    assert spec["spec"]["platform"]["attributes"]["mountMode"] == "volume"
    limits = spec["spec"].get("resources", {}).get("limits", {})
    assert ("nvidia.com/gpu" in limits) == gpu
    # The image pull on a fresh node and the model load; on a GPU also the compiled
    # warm-up in init_context: both outlast Nuclio's 120 s default.
    assert spec["spec"]["readinessTimeoutSeconds"] >= (900 if gpu else 600)


@pytest.mark.parametrize("name", SPECS)
def test_shipped_specs(name):
    check_spec(load(name), gpu="gpu" in name)


def test_the_redis_variables_of_both_cvat_generations_are_read():
    for prefix in ("CVAT_FUNCTIONS_REDIS_", "CVAT_REDIS_"):
        for name in ("HOST", "PORT", "PASSWORD"):
            assert prefix in CODE and name in CODE
    from tracker_state.config import store_from_env

    _, old = store_from_env({"CVAT_REDIS_HOST": "cvat_redis_ondisk", "CVAT_REDIS_PORT": "6666"}, 6)
    assert "redis at cvat_redis_ondisk:6666 (from CVAT_REDIS_HOST" in old
    _, both = store_from_env(
        {
            "CVAT_REDIS_HOST": "old",
            "CVAT_FUNCTIONS_REDIS_HOST": "new",
            "CVAT_FUNCTIONS_REDIS_PORT": "7000",
            "CVAT_REDIS_PASSWORD": "secret",
        },
        6,
    )
    assert "redis at new:7000 (from CVAT_FUNCTIONS_REDIS_HOST, with password" in both
    assert "secret" not in both
    _, none = store_from_env({}, 6)
    assert "in memory" in none


def test_the_function_folder_holds_only_the_function():
    assert files_under(FUNCTION_DIR) == FUNCTION_FILES
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "."],
        cwd=FUNCTION_DIR,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert set(tracked) == FUNCTION_FILES


def fake_nuctl(tmp_path: Path, projects: bool = True) -> tuple[Path, Path, Path]:
    """A stand-in for the nuctl binary (no Nuclio here): records its arguments, one call
    a line, and copies each folder it is asked to deploy (the build context) to
    staged/<n>. With ``projects=False`` no project exists yet (``get project`` fails, as
    on a fresh cluster). Returns (nuctl, record, staged)."""
    record, staged = tmp_path / "calls", tmp_path / "staged"
    fake = tmp_path / "nuctl"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$@" >> "{record}"\n'
        + ("" if projects else '[ "$1 $2" = "get project" ] && exit 1\n')
        + 'if [ "$1" = deploy ]; then\n'
        f'  n=$(ls "{staged}" 2>/dev/null | wc -l)\n'
        "  while [ $# -gt 0 ]; do\n"
        f'    [ "$1" = --path ] && mkdir -p "{staged}" && cp -r "$2" "{staged}/$n"\n'
        f'    [ "$1" = --file ] && cp "$2" "{tmp_path}/spec-$n.yaml"\n'
        "    shift\n"
        "  done\n"
        "fi\n"
    )
    fake.chmod(0o755)
    return fake, record, staged


# CVAT's serverless/deploy_cpu.sh and deploy_gpu.sh, as documented for its Enterprise
# tracker: every function(-gpu).yaml under the given path is deployed with its folder as
# the build context and the Redis variables of the CVAT release. Written from their
# documented behaviour (not copied); $1 = path, $2 = spec name, $3 = Redis prefix.
CVAT_DEPLOY_LOOP = """
set -eu
shopt -s globstar
nuctl create project cvat --platform local
for func_config in "$1"/**/"$2"; do
    func_root="$(dirname "$func_config")"
    nuctl deploy --project-name cvat --path "$func_root" --file "$func_config" \\
        --platform local --env "$3HOST=cvat_redis_ondisk" --env "$3PORT=6666" \\
        --platform-config '{"attributes": {"network": "cvat_cvat"}}'
done
nuctl get function --platform local
"""


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("redis_prefix", ["CVAT_FUNCTIONS_REDIS_", "CVAT_REDIS_"])
def test_cvats_deploy_loop_on_the_readme_path_deploys_one_function(tmp_path, spec, redis_prefix):
    _, record, staged = fake_nuctl(tmp_path)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    subprocess.run(
        ["bash", "-c", CVAT_DEPLOY_LOOP, "deploy", str(SERVERLESS), spec, redis_prefix],
        check=True,
        env=env,
    )
    deploys = [line for line in record.read_text().splitlines() if line.startswith("deploy")]
    assert len(deploys) == 1
    assert f"--path {FUNCTION_DIR} --file {FUNCTION_DIR / spec}" in deploys[0]
    assert files_under(staged / "0") == FUNCTION_FILES  # no .venv, tests, benchmarks
    check_spec(yaml.safe_load((tmp_path / "spec-0.yaml").read_text()), gpu="gpu" in spec)


@pytest.mark.parametrize(
    ("script", "spec"), [("deploy_cpu.sh", SPECS[0]), ("deploy_gpu.sh", SPECS[1])]
)
@pytest.mark.parametrize("size", SIZES)
def test_our_deploy_scripts_deploy_the_chosen_model_size(tmp_path, script, spec, size):
    nuctl, record, staged = fake_nuctl(tmp_path)
    env = {**os.environ, "NUCTL": str(nuctl), "SAM2_MODEL_SIZE": size}
    env.pop("CVAT_FUNCTIONS_REDIS_HOST", None)
    subprocess.run(["bash", str(REPO / script)], check=True, env=env, cwd=tmp_path)
    calls = record.read_text()
    assert "create project cvat" in calls
    assert "deploy --project-name cvat" in calls
    assert "--env CVAT_FUNCTIONS_REDIS_HOST=cvat_redis_ondisk" in calls
    assert "--env CVAT_FUNCTIONS_REDIS_PORT=6666" in calls
    assert '"network": "cvat_cvat"' in calls
    assert "--platform local" in calls
    staged_files = files_under(staged / "0")
    assert staged_files == (FUNCTION_FILES - {"function-gpu.yaml"})
    assert not any("__pycache__" in str(p) for p in (staged / "0").rglob("*"))
    deployed = yaml.safe_load((tmp_path / "spec-0.yaml").read_text())
    check_spec(deployed, gpu="gpu" in spec, size=size)
    if size == "tiny":
        assert (tmp_path / "spec-0.yaml").read_text() == (FUNCTION_DIR / spec).read_text()
    else:
        assert size.replace("_", "-") in deployed["metadata"]["name"]
        assert size in deployed["metadata"]["annotations"]["name"]


# Objects per call on CPU per size: what fits in half of CVAT's 120 s at one thread per
# worker (bench/call_budget.py, docs/benchmarks.md).
CPU_OBJECTS_PER_CALL = {"tiny": 7, "small": 7, "base_plus": 6, "large": 4}


@pytest.mark.parametrize("size", SIZES)
def test_objects_per_call_follow_the_model_size_on_cpu(tmp_path, size):
    rendered = {}
    for script in ("deploy_cpu.sh", "deploy_gpu.sh"):
        nuctl, _, _ = fake_nuctl(tmp_path)
        env = {**os.environ, "NUCTL": str(nuctl), "SAM2_MODEL_SIZE": size}
        env.pop("SAM2_MAX_OBJECTS_PER_CALL", None)
        subprocess.run(["bash", str(REPO / script)], check=True, env=env, cwd=tmp_path)
        rendered[script] = env_of(yaml.safe_load((tmp_path / "spec-0.yaml").read_text()))
        (tmp_path / "spec-0.yaml").unlink()
        shutil.rmtree(tmp_path / "staged")
    assert rendered["deploy_cpu.sh"]["SAM2_MAX_OBJECTS_PER_CALL"] == str(CPU_OBJECTS_PER_CALL[size])
    assert rendered["deploy_gpu.sh"]["SAM2_MAX_OBJECTS_PER_CALL"] == "32"


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"SAM2_MAX_OBJECTS_PER_CALL": "3"}, {"SAM2_MAX_OBJECTS_PER_CALL": "3"}),
        ({"SAM2_DEVICE": "cuda:1"}, {"SAM2_DEVICE": "cuda:1"}),  # a GPU of its own on Docker
    ],
)
def test_deploy_variables_reach_the_spec(tmp_path, variables, expected):
    nuctl, _, _ = fake_nuctl(tmp_path)
    env = {**os.environ, "NUCTL": str(nuctl), **variables}
    subprocess.run(["bash", str(REPO / "deploy_gpu.sh")], check=True, env=env, cwd=tmp_path)
    deployed = yaml.safe_load((tmp_path / "spec-0.yaml").read_text())
    assert expected.items() <= env_of(deployed).items()
    check_spec(deployed, gpu=True)


@pytest.mark.parametrize(
    ("torch_cuda", "index"), [("cu130", None), ("cu126", "https://download.pytorch.org/whl/cu126")]
)
def test_the_cuda_build_of_torch_is_a_choice(tmp_path, torch_cuda, index):
    nuctl, _, _ = fake_nuctl(tmp_path)
    env = {**os.environ, "NUCTL": str(nuctl), "TORCH_CUDA": torch_cuda}
    subprocess.run(["bash", str(REPO / "deploy_gpu.sh")], check=True, env=env, cwd=tmp_path)
    deployed = yaml.safe_load((tmp_path / "spec-0.yaml").read_text())
    [torch_step] = [step for step in build_steps(deployed) if "torch==" in step]
    expected = "pip install --no-cache-dir " + (f"--index-url {index} " if index else "")
    assert torch_step == expected + "torch==2.13.0"
    check_spec(deployed, gpu=True)


def test_two_model_sizes_staged_into_one_folder_are_both_deployed(tmp_path):
    """Sizes side by side: each is staged into its own folder, and CVAT's deploy loop
    over the staging folder deploys both, under two names."""
    stage_dir = tmp_path / "functions"
    for size in ("tiny", "large"):
        env = {**os.environ, "SAM2_MODEL_SIZE": size, "STAGE_DIR": str(stage_dir)}
        subprocess.run(["bash", str(REPO / "deploy_gpu.sh")], check=True, env=env)
    fake_nuctl(tmp_path)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    subprocess.run(
        ["bash", "-c", CVAT_DEPLOY_LOOP, "deploy", str(stage_dir), SPECS[1], "CVAT_REDIS_"],
        check=True,
        env=env,
    )
    specs = [yaml.safe_load((tmp_path / f"spec-{i}.yaml").read_text()) for i in range(2)]
    assert {spec["metadata"]["name"] for spec in specs} == {
        "pth-facebookresearch-sam2-tracker",
        "pth-facebookresearch-sam2-large-tracker",
    }
    for spec in specs:
        size = "large" if "large" in spec["metadata"]["name"] else "tiny"
        check_spec(spec, gpu=True, size=size)


@pytest.mark.parametrize(
    ("script", "spec"), [("deploy_cpu.sh", SPECS[0]), ("deploy_gpu.sh", SPECS[1])]
)
def test_kubernetes_deploys_as_admins_run_cvats_chart(tmp_path, script, spec):
    """NUCLIO_PLATFORM=kube next to a Helm release "annot" in namespace "labeling": the
    project is created there first, Kvrocks is the release's service and its password
    comes from the release's secret (never on the command line), with requests,
    replicas and, on GPU, a toleration."""
    nuctl, record, staged = fake_nuctl(tmp_path, projects=False)
    env = {
        **os.environ,
        "NUCTL": str(nuctl),
        "NUCLIO_PLATFORM": "kube",
        "CVAT_RELEASE": "annot",
        "CVAT_NAMESPACE": "labeling",
        "REGISTRY": "registry.example.com/cvat",
        "MIN_REPLICAS": "2",
        "MAX_REPLICAS": "4",
        "CVAT_FUNCTIONS_REDIS_PASSWORD": "must-not-be-used",
    }
    env.pop("CVAT_FUNCTIONS_REDIS_HOST", None)
    subprocess.run(["bash", str(REPO / script)], check=True, env=env, cwd=tmp_path)
    calls = record.read_text().splitlines()
    assert calls[0] == "get project cvat --platform kube --namespace labeling"
    assert calls[1] == "create project cvat --platform kube --namespace labeling"
    assert calls[2].startswith("deploy --project-name cvat --path ")
    assert "--platform kube --namespace labeling --registry registry.example.com/cvat" in calls[2]
    assert "must-not-be-used" not in record.read_text()
    assert files_under(staged / "0") == FUNCTION_FILES - {"function-gpu.yaml"}

    text = (tmp_path / "spec-0.yaml").read_text()
    assert "must-not-be-used" not in text
    deployed = yaml.safe_load(text)
    gpu = "gpu" in spec
    check_spec(deployed, gpu=gpu)
    env_list = {item["name"]: item for item in deployed["spec"]["env"]}
    assert env_list["CVAT_FUNCTIONS_REDIS_HOST"]["value"] == "annot-kvrocks"
    assert env_list["CVAT_FUNCTIONS_REDIS_PORT"]["value"] == "6666"
    assert env_list["CVAT_FUNCTIONS_REDIS_PASSWORD"] == {
        "name": "CVAT_FUNCTIONS_REDIS_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "annot-kvrocks-secret", "key": "password"}},
    }
    resources = deployed["spec"]["resources"]
    assert resources["requests"] == (
        {"cpu": "2", "memory": "8Gi"} if gpu else {"cpu": "4", "memory": "4Gi"}
    )
    if gpu:
        assert resources["limits"] == {"nvidia.com/gpu": 1}
        assert deployed["spec"]["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    else:  # the CPU quota the workers' threads are split from
        assert resources["limits"] == {"cpu": "4"}
        assert "tolerations" not in deployed["spec"]
    assert (deployed["spec"]["minReplicas"], deployed["spec"]["maxReplicas"]) == (2, 4)


def test_kubernetes_needs_a_registry(tmp_path):
    nuctl, record, _ = fake_nuctl(tmp_path)
    env = {**os.environ, "NUCTL": str(nuctl), "NUCLIO_PLATFORM": "kube"}
    env.pop("REGISTRY", None)
    result = subprocess.run(
        ["bash", str(REPO / "deploy_cpu.sh")], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "needs REGISTRY" in result.stderr
    assert not record.exists()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [("NUCLIO_PLATFORM", "swarm", "local or kube"), ("TORCH_CUDA", "cu118", "cu130 or cu126")],
)
def test_unknown_platforms_and_cuda_builds_are_refused(tmp_path, variable, value, message):
    nuctl, record, _ = fake_nuctl(tmp_path)
    env = {**os.environ, "NUCTL": str(nuctl), variable: value}
    result = subprocess.run(
        ["bash", str(REPO / "deploy_gpu.sh")], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2 and message in result.stderr
    assert not record.exists()


def test_an_unknown_model_size_is_refused(tmp_path):
    nuctl, record, _ = fake_nuctl(tmp_path)
    env = {**os.environ, "NUCTL": str(nuctl), "SAM2_MODEL_SIZE": "huge"}
    result = subprocess.run(
        ["bash", str(REPO / "deploy_cpu.sh")], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2 and "tiny, small, base_plus or large" in result.stderr
    assert not record.exists()


def test_the_staged_function_runs_under_nuclios_python_runtime(
    tmp_path, present_checkpoint, own_redis
):
    """CVAT's deploy loop stages the folder; the stand-in runtime runs it there with the
    Redis variables of an older CVAT (CVAT_REDIS_*): the startup line appears once and
    names the store; one line per call; no line twice; no per-frame SAM 2 warning."""
    _, _, staged = fake_nuctl(tmp_path)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    subprocess.run(
        ["bash", "-c", CVAT_DEPLOY_LOOP, "deploy", str(SERVERLESS), "function.yaml", "CVAT_REDIS_"],
        check=True,
        env=env,
        capture_output=True,
    )
    folder = staged / "0"
    sequence = davis_sequence("dog")
    frames = [base64.b64encode(p.read_bytes()).decode() for p in frame_paths(sequence)[:4]]
    mask = encode_mask(ground_truth(sequence))
    bodies = [{"image": frames[0], "shapes": [{"type": "mask", "points": mask}], "states": []}]
    runtime_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CVAT_")},
        "PYTHONPATH": "",
        "SAM2_CHECKPOINT": str(present_checkpoint),
        "SAM2_DEVICE": "cpu",
        "SAM2_HYDRA_OVERRIDES": f"++model.image_size={SMALL_IMAGE_SIZE}",
        "CVAT_REDIS_HOST": "127.0.0.1",  # as an older CVAT's deploy script names it
        "CVAT_REDIS_PORT": str(own_redis.port),
    }

    logs, responses, printed = run_function(folder, runtime_env, bodies[:1], tmp_path)
    states = json.loads(responses[0]["body"])["states"]
    calls = [
        {"image": frames[1], "shapes": [None], "states": states},
        {"image": frames[1], "shapes": [None], "states": states},  # a replay
        {"image": frames[2], "shapes": [None], "states": states},  # stale: 409
    ]
    logs, responses, printed = run_function(folder, runtime_env, calls, tmp_path)
    assert [r["status_code"] for r in responses] == [200, 200, 409]
    assert responses[0]["body"] == responses[1]["body"]

    startup = [line for line in logs if line.startswith("SAM 2 tracker ready")]
    assert len(startup) == 1
    assert f"(input {SMALL_IMAGE_SIZE}px) on cpu, float32, not compiled" in startup[0]
    assert f"redis at 127.0.0.1:{own_redis.port} (from CVAT_REDIS_HOST" in startup[0]
    assert "answered PING in" in startup[0]
    assert "hole filling" in startup[0] and "limits:" in startup[0]
    calls = [line for line in logs if line.startswith("tracked ")]
    assert calls[0].startswith("tracked 0 started, 1 continued, 0 replayed objects on a")
    assert calls[1].startswith("tracked 0 started, 0 continued, 1 replayed objects")
    assert any(line.startswith("answered 409 Conflict:") for line in logs)
    # Nothing reaches the console besides the socket: no line printed twice, and SAM 2's
    # missing-extension warning not at all (the startup line says it instead).
    assert printed.strip() == "", printed[-2000:]
    assert len(logs) == len(set(logs))
