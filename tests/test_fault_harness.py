"""The load and fault harness (bench/fault_harness.py), small and seeded: 2 replicas behind a
round-robin front, 3 annotators through a CVAT-like relay, 8 frames at 256 input, replicas
SIGKILLed and restarted, Redis restarted once with its data, answers dropped and delayed.
Every track finishes, every answer equals the undisturbed run's, and every final state
continues."""

from __future__ import annotations

import json

from conftest import davis_sequence

from bench.fault_harness import main


def test_tracks_survive_kills_a_redis_restart_and_lost_answers(tmp_path, capsys):
    for sequence in ("car-shadow", "dog", "blackswan"):
        davis_sequence(sequence)
    report = json.loads(
        main(
            [
                *("--replicas", "2", "--annotators", "3", "--frames", "8"),
                *("--kills", "2", "--kill-every", "1.5", "--redis-restarts", "1"),
                *("--drop-rate", "0.08", "--delay-rate", "0.04", "--timeout", "15"),
                *("--out", str(tmp_path)),
            ]
        ).read_text()
    )
    [row] = report["rows"]
    assert row["kills_done"] == 2 and row["redis_restarts_done"] == 1
    assert row["lost_tracks"] == 0, row["errors"]
    assert row["answers_compared"] == 3 * 8  # frames 1-7 and the final state's next frame
    assert row["answers_different"] == 0
    assert row["restarted_objects"] == 0  # no state was lost
    assert "409" not in row["statuses"]
    retried = sum(n for status, n in row["statuses"].items() if status != "200")
    assert retried > 0, "no fault reached a client: the run tested nothing"
    assert "lost" in capsys.readouterr().out
