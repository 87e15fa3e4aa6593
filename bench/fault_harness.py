"""Many annotators, several replicas, workers killed and Redis restarted: every track goes
on, answer for answer, and how fast.

    python -m bench.fault_harness                                   # 2 replicas, 4 annotators
    python -m bench.fault_harness --replicas 1 2 4 --annotators 8 --frames 20 --kills 10

All on loopback, seeded:
* R replicas of the function, each its own ``serve.py`` process (real HTTP, one worker);
* a round-robin front, so consecutive calls of one object land on different replicas (the
  worst case for the worker cache); a replica that is down answers 502 there, and the
  front drops or delays a share of answers (the call ran; the client sees no answer);
* one ``redis-server`` started here with its AOF on (``appendfsync always``), so a
  restart keeps every state; optionally ``--maxmemory`` with an eviction policy;
* a CVAT-like relay in front: frames read by number, states signed and checked as CVAT
  does (``bench.cvat_signing``);
* A annotators (threads), each tracking its own object over F frames of a DAVIS sequence
  through that relay, with a client timeout and retries of the same call (the function
  answers a repeated step from what it stored: a replay); a lost state (404/410, e.g.
  evicted) starts the object again from its last shape;
* a fault loop: every few seconds a random replica is SIGKILLed and started again, and
  Redis is restarted once in the middle.

Checks: every track finishes; every answer equals the answer of an undisturbed run of the
same track (one replica, no faults, one annotator at a time: masks bit for bit, as JSON);
no state lost. Reports counts (statuses, timeouts, retries, replays, restarts), latency
p50/p95/p99 per call (first try to answer), object-frames per second and Redis memory;
writes JSON. On a 2-core machine replicas share the same cores: the scaling columns show
overhead, not capacity.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import redis
from PIL import Image
from tracking.random_weights import make_random_checkpoint
from tracking.shapes import encode_shape

from bench.cvat_signing import StateSigner
from bench.run_benchmark import DAVIS, REPO, report, spread

SEQUENCES = ("car-shadow", "dog", "blackswan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not come up in {timeout:.0f} s")


class RedisProcess:
    """A redis-server of the harness's own, AOF on, that it may restart with its data."""

    def __init__(self, maxmemory: str | None, policy: str) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="harness-redis-"))
        self.limits = ["--maxmemory", maxmemory, "--maxmemory-policy", policy] if maxmemory else []
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir)),
                *self.limits,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(answers, 20, "redis-server")

    def restart(self) -> None:
        self.process.terminate()  # SIGTERM: Redis flushes its AOF and exits
        self.process.wait(timeout=20)
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
        shutil.rmtree(self.dir, ignore_errors=True)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, protocol=2, socket_timeout=5)


class Replica:
    """One serve.py process (one Nuclio worker) on its own port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.env = {**env, "PORT": str(self.port)}
        self.log = log
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO / "serve.py")],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


@dataclass
class FrontFaults:
    """What the front does to answers, seeded: drop (the call ran, the connection closes
    without an answer) or hold past the client's timeout."""

    drop_rate: float
    delay_rate: float
    delay_seconds: float
    rng: random.Random
    dropped: int = 0
    delayed: int = 0

    def choose(self) -> str | None:
        roll = self.rng.random()
        if roll < self.drop_rate:
            self.dropped += 1
            return "drop"
        if roll < self.drop_rate + self.delay_rate:
            self.delayed += 1
            return "delay"
        return None


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up (its timeout) closed the connection: expected here


def serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    server = QuietServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def front_server(replicas: list[Replica], faults: FrontFaults | None):
    """A round-robin HTTP front over the replicas (no retries of its own)."""
    turn = {"next": 0}
    lock = threading.Lock()

    class Front(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                replica = replicas[turn["next"] % len(replicas)]
                turn["next"] += 1
                fault = faults.choose() if faults else None
            request = urllib.request.Request(
                replica.url, body, {"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=300) as response:
                    status, answer = response.status, response.read()
            except urllib.error.HTTPError as error:
                status, answer = error.code, error.read()
            except OSError:
                status, answer = 502, b'{"error": "the replica is down"}'
            if fault == "drop":
                self.close_connection = True
                return  # no answer at all
            if fault == "delay":
                time.sleep(faults.delay_seconds)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    return serve(Front)


def relay_server(front_url: str, frames: dict[str, list[Path]], signer: StateSigner):
    """CVAT's lambda endpoint, reduced to what tracking needs: ``{task, frame, shapes |
    states}`` in, the frame read here, states unsigned and signed, statuses relayed."""

    class Relay(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            try:
                states = [signer.unsign(s) for s in body.get("states") or []]
            except ValueError:
                self._send(400, b'"invalid or expired tracker state"')
                return
            shapes = body.get("shapes") or [None] * len(states)
            image = base64.b64encode(frames[body["task"]][body["frame"]].read_bytes()).decode()
            data = json.dumps({"image": image, "shapes": shapes, "states": states}).encode()
            request = urllib.request.Request(front_url, data, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=300) as response:
                    answer = json.load(response)
            except urllib.error.HTTPError as error:
                self._send(error.code, json.dumps(f"{error.code} Error").encode())
                return
            except OSError:
                self._send(504, b'"Gateway Timeout"')  # CVAT's answer when no answer came
                return
            answer["states"] = [signer.sign(s) for s in answer["states"]]
            self._send(200, json.dumps(answer).encode())

    return serve(Relay)


@dataclass
class Annotator:
    """One person tracking one object over ``frames`` frames of ``task``, call by call."""

    task: str
    mask: np.ndarray
    frames: int
    timeout: float
    answers: dict[int, object] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    error: str | None = None
    states: list | None = None
    last: dict | None = None  # the last shape answered (or drawn)

    def _note(self, what: str) -> None:
        self.statuses[what] = self.statuses.get(what, 0) + 1

    def _call(self, url: str, body: dict, tries: int = 60) -> dict:
        """The same call until it is answered (the function replays what it already did)."""
        data = json.dumps(body).encode()
        began = time.monotonic()
        for _ in range(tries):
            request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    answer = json.load(response)
                self._note("200")
                self.latencies.append(time.monotonic() - began)
                return answer
            except urllib.error.HTTPError as error:
                self._note(str(error.code))
                if error.code in (404, 410):
                    raise
                if error.code not in (502, 503, 504):
                    raise RuntimeError(f"answered {error.code}: {error.read()[:200]!r}") from error
            except (TimeoutError, OSError):
                self._note("no answer")
            time.sleep(0.2)
        raise RuntimeError(f"no answer after {tries} tries")

    def run(self, url: str) -> None:
        try:
            self.last = {"type": "mask", "points": encode_shape("mask", self.mask)}
            answer = self._call(url, {"task": self.task, "frame": 0, "shapes": [self.last]})
            self.states = answer["states"]
            for frame in range(1, self.frames):
                self._step(url, frame)
        except Exception as error:  # reported, never hidden
            self.error = f"{type(error).__name__}: {error}"

    def _step(self, url: str, frame: int, restarts: int = 5) -> None:
        """The object onto ``frame``; a lost state (404/410: expired, evicted) starts it
        again from its last shape on the frame before, as the UI plugin does."""
        for _ in range(restarts + 1):
            try:
                answer = self._call(url, {"task": self.task, "frame": frame, "states": self.states})
                break
            except urllib.error.HTTPError:
                self.restarts += 1
                restart = {"task": self.task, "frame": frame - 1, "shapes": [self.last]}
                self.states = self._call(url, restart)["states"]
        else:
            raise RuntimeError(f"frame {frame}: the state was lost {restarts + 1} times")
        self.states = answer["states"]
        self.answers[frame] = answer["shapes"][0]
        self.last = answer["shapes"][0] or self.last

    def finish(self, url: str) -> None:
        """One more frame from the final state, once the faults are over: the state was
        kept intact (or, evicted, starts again)."""
        if self.error is None:
            try:
                self._step(url, self.frames)
            except Exception as error:
                self.error = f"final state: {type(error).__name__}: {error}"


class FaultLoop(threading.Thread):
    """Kills a random replica every ``every`` seconds (up to ``kills``) and starts it
    again; restarts Redis once after ``redis_after`` seconds."""

    def __init__(self, replicas, redis_process, every, kills, redis_restarts, rng) -> None:
        super().__init__(daemon=True)
        self.replicas, self.redis_process = replicas, redis_process
        self.every, self.kills, self.redis_restarts = every, kills, redis_restarts
        self.rng = rng
        self.done = threading.Event()
        self.killed = 0
        self.redis_restarted = 0

    def run(self) -> None:
        while not self.done.wait(self.every):
            if self.killed < self.kills:
                replica = self.rng.choice(self.replicas)
                replica.kill()
                self.killed += 1
                replica.start()
            if self.redis_restarted < self.redis_restarts and self.killed >= self.kills // 2:
                self.redis_process.restart()
                self.redis_restarted += 1


def object_masks(count: int) -> list[tuple[str, np.ndarray]]:
    """(sequence, mask) per annotator: the annotated object, then shifted parts of it."""
    chosen = []
    for index in range(count):
        sequence = SEQUENCES[index % len(SEQUENCES)]
        mask = np.array(Image.open(DAVIS / sequence / "masks" / "00000.png")) > 0
        variant = index // len(SEQUENCES)
        if variant:
            cols = np.flatnonzero(mask.any(axis=0))
            cut = cols[0] + (cols[-1] - cols[0]) * variant // (variant + 2)
            mask = mask.copy()
            mask[:, :cut] = False
        chosen.append((sequence, mask))
    return chosen


@dataclass
class RunSettings:
    replicas: int
    annotators: int
    frames: int
    kills: int
    kill_every: float
    redis_restarts: int
    drop_rate: float
    delay_rate: float
    timeout: float
    seed: int
    maxmemory: str | None = None
    policy: str = "allkeys-lru"


def replayed_in(logs: list[Path]) -> int:
    """Objects the replicas answered from what they stored (their per-call log lines)."""
    total = 0
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            if " replayed objects on " in line:
                total += int(line.split(" replayed objects on ")[0].rsplit(" ", 1)[-1])
    return total


def run_once(settings: RunSettings, env: dict[str, str], work: Path, faults: bool) -> dict:
    """One run: its annotators' answers, counts and timings."""
    redis_process = RedisProcess(settings.maxmemory, settings.policy)
    redis_process.start()
    env = {
        **env,
        "CVAT_FUNCTIONS_REDIS_HOST": "127.0.0.1",
        "CVAT_FUNCTIONS_REDIS_PORT": str(redis_process.port),
    }
    label = f"{settings.replicas}-{'faults' if faults else 'alone'}"
    replicas = [Replica(env, work / f"replica-{label}-{i}.log") for i in range(settings.replicas)]
    rng = random.Random(settings.seed)
    front_faults = (
        FrontFaults(settings.drop_rate, settings.delay_rate, settings.timeout + 1, rng)
        if faults
        else None
    )
    servers = []
    loop = None
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            wait_until(replica.ready, 180, f"replica on port {replica.port}")
        front, front_url = front_server(replicas, front_faults)
        frames = {s: sorted((DAVIS / s / "frames").glob("*.jpg")) for s in SEQUENCES}
        relay, relay_url = relay_server(front_url, frames, StateSigner())
        servers += [front, relay]
        people = [
            Annotator(task, mask, settings.frames, settings.timeout)
            for task, mask in object_masks(settings.annotators)
        ]
        if faults:
            loop = FaultLoop(
                replicas,
                redis_process,
                settings.kill_every,
                settings.kills,
                settings.redis_restarts,
                rng,
            )
            loop.start()
        began = time.monotonic()
        if faults:
            threads = [threading.Thread(target=p.run, args=(relay_url,)) for p in people]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:  # undisturbed: one annotator at a time
            for person in people:
                person.run(relay_url)
        seconds = time.monotonic() - began
        if loop is not None:
            loop.done.set()
            loop.join()
        for replica in replicas:
            wait_until(replica.ready, 180, f"replica on port {replica.port}")
        for person in people:  # every state, after all faults, continues once more
            person.finish(relay_url)
        memory = redis_process.client().info("memory")["used_memory"]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        for replica in replicas:
            replica.kill()
        redis_process.stop()
    return {
        "people": people,
        "seconds": seconds,
        "kills": loop.killed if loop else 0,
        "redis_restarts": loop.redis_restarted if loop else 0,
        "dropped": front_faults.dropped if front_faults else 0,
        "delayed": front_faults.delayed if front_faults else 0,
        "redis_used_memory": memory,
        "replayed": replayed_in([replica.log for replica in replicas]),
    }


def compare(settings: RunSettings, disturbed: dict, reference: dict) -> dict:
    """The row of the report: did every track finish with the undisturbed answers?"""
    people, expected = disturbed["people"], reference["people"]
    statuses: dict[str, int] = {}
    for person in people:
        for what, count in person.statuses.items():
            statuses[what] = statuses.get(what, 0) + count
    unfinished = [p for p in people if p.error or len(p.answers) != settings.frames]
    mismatched = sum(
        1
        for person, ref in zip(people, expected, strict=True)
        if person.restarts == 0
        for frame, shape in ref.answers.items()
        if person.answers.get(frame) != shape
    )
    latencies = [t for p in people for t in p.latencies]
    return {
        **{k: v for k, v in asdict(settings).items() if k not in ("seed",)},
        "seed": settings.seed,
        "tracks": len(people),
        "lost_tracks": len(unfinished),
        "errors": [p.error for p in people if p.error],
        "answers_compared": sum(
            len(r.answers) for p, r in zip(people, expected) if p.restarts == 0
        ),
        "answers_different": mismatched,
        "restarted_objects": sum(p.restarts for p in people),
        "statuses": statuses,
        "kills_done": disturbed["kills"],
        "redis_restarts_done": disturbed["redis_restarts"],
        "replayed_objects": disturbed["replayed"],
        "answers_dropped": disturbed["dropped"],
        "answers_delayed": disturbed["delayed"],
        "latency_s": {
            **spread(latencies),
            "p95": percentile(latencies, 95),
            "p99": percentile(latencies, 99),
        },
        "object_frames_per_second": sum(len(p.answers) for p in people) / disturbed["seconds"],
        "undisturbed_object_frames_per_second": sum(len(r.answers) for r in expected)
        / reference["seconds"],
        "redis_used_memory_bytes": disturbed["redis_used_memory"],
    }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def print_rows(rows: list[dict]) -> None:
    header = (
        f"{'R':>2} {'A':>3} {'F':>3} {'kills':>5} {'redis':>5} {'lost':>4} {'diff':>4} "
        f"{'compared':>8} {'replays':>7} {'p50 s':>6} {'p95 s':>6} {'p99 s':>6} "
        f"{'obj-fr/s':>8} {'alone':>6} {'statuses'}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        latency = row["latency_s"]
        print(
            f"{row['replicas']:>2} {row['annotators']:>3} {row['frames']:>3} "
            f"{row['kills_done']:>5} {row['redis_restarts_done']:>5} {row['lost_tracks']:>4} "
            f"{row['answers_different']:>4} {row['answers_compared']:>8} "
            f"{row['replayed_objects']:>7} {latency['median']:>6.2f} {latency['p95']:>6.2f} "
            f"{latency['p99']:>6.2f} "
            f"{row['object_frames_per_second']:>8.2f} "
            f"{row['undisturbed_object_frames_per_second']:>6.2f} {row['statuses']}"
        )


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[2])
    parser.add_argument("--annotators", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=4.0, help="seconds")
    parser.add_argument("--redis-restarts", type=int, default=1)
    parser.add_argument("--drop-rate", type=float, default=0.05)
    parser.add_argument("--delay-rate", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=20.0, help="client timeout, s")
    parser.add_argument("--image-size", type=int, default=256, help="SAM 2 input")
    parser.add_argument("--maxmemory", default=None, help="Redis maxmemory, e.g. 4mb")
    parser.add_argument("--policy", default="allkeys-lru", help="Redis maxmemory-policy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="fault-harness-"))
    checkpoint = make_random_checkpoint(work / "sam2.pt")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CVAT_")},
        "SAM2_CHECKPOINT": str(checkpoint),
        "SAM2_DEVICE": "cpu",
        "SAM2_HYDRA_OVERRIDES": f"++model.image_size={args.image_size}",
        # The replicas share this machine's cores: one thread each keeps results equal
        # whatever runs beside them, and the replicas from fighting over the cores.
        "SAM2_TORCH_THREADS": "1",
    }
    rows = []
    reference = None
    for replicas in args.replicas:
        settings = RunSettings(
            replicas,
            args.annotators,
            args.frames,
            args.kills,
            args.kill_every,
            args.redis_restarts,
            args.drop_rate,
            args.delay_rate,
            args.timeout,
            args.seed,
            args.maxmemory,
            args.policy,
        )
        if reference is None:  # the same tracks, one replica, no faults, one at a time
            undisturbed = RunSettings(**{**asdict(settings), "replicas": 1, "maxmemory": None})
            reference = run_once(undisturbed, env, work, faults=False)
        rows.append(compare(settings, run_once(settings, env, work, faults=True), reference))
        print_rows(rows[-1:])
    machine = {
        "device": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "image_size": args.image_size,
        "torch_threads_per_replica": 1,
    }
    legend = (
        "lost: tracks not finished; diff: answers unlike the undisturbed run's; p50-p99: "
        "seconds from a call's first try to its answer; alone: the undisturbed run"
    )
    return report(machine, rows, legend, args.out / "fault-harness", print_rows)


if __name__ == "__main__":
    main()
