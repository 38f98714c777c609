"""The arithmetic of bench/parallel (the ideal bound and the busy-slot steps); the benchmark itself
runs a real scheduler and is not part of the test suite."""

from __future__ import annotations

import importlib.util

from flywheel.config import PROJECT_ROOT

spec = importlib.util.spec_from_file_location("bench_parallel_run", PROJECT_ROOT / "bench" / "parallel" / "run.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_ideal_makespan_is_the_larger_of_critical_path_and_slot_seconds_over_g():
    seconds, slots = {"base": 6, "icl": 8, "lora": 20}, {"base": 1, "icl": 1, "lora": 2}
    c, critical, slot_seconds = bench.ideal_makespan(seconds, slots, runs=3, workloads=4, candidates=2, gpus=8)
    assert slot_seconds == 24 * (6 + 8 + 40) and critical == 20 and c == slot_seconds / 8
    c, _, _ = bench.ideal_makespan(seconds, slots, runs=1, workloads=1, candidates=1, gpus=64)
    assert c == 20  # a single chain: the longest job bounds it


def test_busy_slots_steps():
    jobs = [{"start": 0, "end": 10, "slots": 2}, {"start": 5, "end": 15, "slots": 1}, {"start": 10, "end": 12, "slots": 2}]
    steps = bench.busy_slots(jobs)
    assert max(b for _, b in steps) == 3 and steps[-1] == (15, 0)
    assert dict(steps)[10] == 3  # the job ending at 10 frees its slots for the one starting at 10
    assert bench.parse_seconds("base=6,lora=20") == {"base": 6.0, "lora": 20.0}


def test_the_plot_has_a_panel_per_series_one_or_two(tmp_path):
    one = [(0.0, 1), (5.0, 3), (9.0, 0)]
    for series in ({"(b) ours": one}, {"(b) ours": one, "(a) blueprint": [(0.0, 2), (4.0, 0)]}):
        out = tmp_path / f"slots-{len(series)}.png"
        bench.plot(out, series, gpus=8)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
