from flywheel.discovery import decide_workloads


def test_selects_workloads_over_the_minimum_and_says_why_others_are_skipped():
    decisions = {d.workload_id: d for d in decide_workloads({"a": 120, "b": 49, "c": 50}, min_records=50)}
    assert decisions["a"].selected and decisions["c"].selected
    assert not decisions["b"].selected
    assert decisions["b"].reason == "only 49 usable records in the window, fewer than min_records=50"
    raw = {d.workload_id: d for d in decide_workloads({"b": 49}, min_records=50, usable=False)}
    assert raw["b"].reason == "only 49 records in the window, fewer than min_records=50"


def test_requested_workloads_restrict_the_run():
    decisions = {d.workload_id: d for d in decide_workloads({"a": 120, "b": 300}, min_records=50,
                                                            requested=["b", "ghost"])}
    assert [w for w, d in decisions.items() if d.selected] == ["b"]
    assert decisions["a"].reason == "not among the requested workloads"
    assert decisions["ghost"].n_records == 0 and not decisions["ghost"].selected
