"""The benchmark runs end to end (tiny setting) and writes what the README promises."""

from __future__ import annotations

import json

from conftest import davis_sequence

from bench.run_benchmark import main


def test_benchmark_writes_table_json_and_plot(tmp_path, shared_redis, capsys):
    davis_sequence("car-shadow")
    json_path = main(
        [
            "--frames",
            "3",
            "--objects",
            "1",
            "2",
            "--image-size",
            "256",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
        ]
    )
    report = json.loads(json_path.read_text())
    assert json_path.with_suffix(".png").stat().st_size > 1000
    rows = report["rows"]
    assert {(r["path"], r["objects"]) for r in rows} == {
        ("ours", 1),
        ("official", 1),
        ("ours", 2),
        ("official", 2),
    }
    for row in rows:
        # Timings from the second pass (lockstep): 2 tracked frames.
        assert row["seconds_per_frame"]["n"] == 2 and row["seconds_per_frame"]["median"] > 0
        assert row["peak_host_mib"] > 0
        if row["path"] == "ours":
            assert row["state_bytes_per_object"] > 0
            assert {"total", "http_json", "decode", "state_read", "state_write", "shapes"} <= set(
                row["overhead_ms"]
            )
        else:
            assert row["speed_ratio"] > 0 and 0 <= row["worst_agreement"] <= 1
    assert report["machine"]["precision"] == "torch.float32"
    assert "ratio" in capsys.readouterr().out


def test_store_benchmark_measures_hits_and_misses(tmp_path, shared_redis):
    from bench.store_benchmark import main as store_main

    davis_sequence("dog")
    report = json.loads(
        store_main(
            ["--repeats", "2", "--backends", "sam2", "--image-size", "256", "--out", str(tmp_path)]
        ).read_text()
    )
    [row] = report["rows"]
    # At 256 input: 6 memories of 16x16x64 bfloat16 and the prompt memory, pointers, head.
    assert 7 * 16 * 16 * 64 * 2 < row["state_bytes_per_object"] < 2**20
    assert 0 < row["bytes_written_per_frame"] < row["state_bytes_per_object"]
    for key in ("hit_ms", "miss_ms", "miss_read_ms", "commit_ms"):
        assert row[key]["n"] == 2 and row[key]["median"] > 0


def test_call_budget_pools_the_per_object_cost_over_sizes():
    from bench.call_budget import with_limits

    def row(size, encoder, one, per_object):
        return {
            "size": size,
            "encoder_s": {"median": encoder},
            "step_1_object_s": {"median": one},
            "per_object_s": per_object,
        }

    rows = with_limits(
        [row("tiny", 5.0, 8.0, 8.0), row("large", 25.0, 7.0, 7.0), row("small", 6.0, 7.5, 7.5)],
        budget=60.0,
    )
    assert {r["pooled_per_object_s"] for r in rows} == {7.5}
    # tiny: fixed 5 + 8 - 7.5 = 5.5 s, then 7 objects of 7.5 s = 58 s <= 60 < 65.5
    assert [(r["size"], r["max_objects"]) for r in rows] == [
        ("tiny", 7),
        ("large", 4),
        ("small", 7),
    ]
    assert all(r["call_s_at_max"] <= 60.0 for r in rows)
