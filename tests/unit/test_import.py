"""`flywheel logs import` on a real PostgreSQL: the blueprint's format, files identified by content
(a corrected file stores its records, the same file twice stores nothing), redaction before
storage, raw storage with retention, and every kind of bad input quarantined with its reason
while nothing accepted is lost. Also the byte-level JSONL reader."""

from __future__ import annotations

import gzip
import io
import json
from datetime import datetime, timedelta, timezone

import pytest

from flywheel.adapters import postgres as store
from flywheel.adapters.postgres_logs import PostgresLogSource, import_file, purge_raw, spool_stdin
from flywheel.records import REASONS, iter_jsonl_lines, parse_line
from flywheel_local.demo_data import generate_logs

END = datetime(2026, 11, 20, tzinfo=timezone.utc)
T = 1795514400  # 2026-11-24T10:00:00Z


def _good(i: int = 0, **over) -> dict:
    """A record as the blueprint logs it: integer epoch seconds, OpenAI request/response objects."""
    record = {
        "timestamp": T + i, "workload_id": "tool_router", "client_id": "aiva-1",
        "request": {"model": "prod", "messages": [{"role": "user", "content": f"where is order A-{100000 + i}? "
                                                                          f"mail me at user{i}@example.com"}]},
        "response": {"id": f"chatcmpl-{i}", "object": "chat.completion", "created": T + i,
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": f"It ships today ({i})."},
                                  "finish_reason": "stop"}], "usage": {"prompt_tokens": 12, "completion_tokens": 5}},
    }
    record.update(over)
    return record


def _line(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def _rows(conn, sql, params=()):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
    conn.commit()
    return rows


# ---------------------------------------------------------------- the byte-level reader

def test_only_newline_ends_a_record():
    text = 'x\u2028y\u2029z\u0085w'
    data = (json.dumps({"a": text}, ensure_ascii=False).encode() + b"\r\n"
            + b'{"b":\r "cr"}\n' + b"   \n" + b'{"c": 1}')  # a bare CR is JSON whitespace
    lines = list(iter_jsonl_lines(io.BytesIO(b"\xef\xbb\xbf" + data)))
    assert [line.number for line in lines] == [1, 2, 3, 4]
    assert json.loads(lines[0].data) == {"a": text}  # BOM and CRLF gone, separators kept inside
    assert json.loads(lines[1].data) == {"b": "cr"}
    assert lines[2].blank and not lines[3].blank and json.loads(lines[3].data) == {"c": 1}
    assert "x\u2028y".splitlines() == ["x", "y"]  # what str.splitlines would have done


def test_oversize_lines_are_not_held_in_memory():
    big = b"{" + b'"a": "' + b"x" * (10 * 1024 * 1024) + b'"}\n'
    lines = list(iter_jsonl_lines(io.BytesIO(big + b'{"b": 1}\n'), max_bytes=65536, chunk=4096))
    assert lines[0].oversize == len(big) - 1 and len(lines[0].data) == 65537
    assert json.loads(lines[1].data) == {"b": 1} and lines[1].number == 2


def test_bytes_lines_invalid_utf8_and_nul_get_their_own_reasons():
    assert parse_line("f:1", b'{"a": "caf\xe9"}').reason == "invalid_utf8"
    assert "byte 10 (0xe9)" in parse_line("f:1", b'{"a": "caf\xe9"}').detail
    assert parse_line("f:1", b'{"a": "x\x00"}').reason == "nul_character"
    good = _line(_good())[:-1]
    assert parse_line("f:1", good.replace(b"where", b"wh\\u0000ere")).reason == "nul_character"
    assert parse_line("f:1", good).workload_id == "tool_router"


# ---------------------------------------------------------------- import

def test_import_the_blueprint_format_redacted_before_storage(flywheel_db, tmp_path):
    path = tmp_path / "aiva.jsonl"
    path.write_bytes(b"".join(_line(_good(i)) for i in range(5)) + b"\n   \n")
    report = import_file(flywheel_db, path)
    assert (report.lines, report.stored, report.blank, report.quarantined) == (7, 5, 2, 0)
    assert report.pii == {"email": 5} and report.redacted
    assert "5 stored (redacted)" in report.summary() and "email 5" in report.summary()
    rows = _rows(flywheel_db, "SELECT * FROM production_logs ORDER BY line_no")
    assert [r["line_no"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["source"] == f"aiva.jsonl@{report.content_sha256[:12]}"
    assert all(r["client_id"] == "aiva-1" and r["redacted"] and r["workload_id"] == "tool_router" for r in rows)
    assert rows[0]["ts"] == datetime(2026, 11, 24, 10, tzinfo=timezone.utc)
    stored = json.loads(rows[0]["raw"])
    assert stored["timestamp"] == "2026-11-24T10:00:00Z" and stored["client_id"] == "aiva-1"
    assert stored["request"]["messages"][0]["content"] == "where is order A-100000? mail me at <EMAIL_1>"
    assert "@example.com" not in json.dumps([r["raw"] for r in rows])
    audit = _rows(flywheel_db, "SELECT * FROM log_imports")
    assert audit[0]["pii"] == {"email": 5} and audit[0]["stored"] == 5 and audit[0]["lines"] == 7


def test_the_same_content_twice_stores_nothing_new_and_says_so(flywheel_db, tmp_path):
    first = tmp_path / "logs.jsonl"
    first.write_bytes(b"".join(_line(_good(i)) for i in range(4)))
    import_file(flywheel_db, first)
    # The very same content under another name, and gzipped: recognised before anything is parsed.
    copy = tmp_path / "renamed.jsonl.gz"
    copy.write_bytes(gzip.compress(first.read_bytes()))
    again = import_file(flywheel_db, copy)
    assert again.same_as and "nothing new stored" in again.summary()
    assert (again.lines, again.stored, again.already_stored) == (4, 0, 4)
    assert _rows(flywheel_db, "SELECT count(*) AS n FROM production_logs")[0]["n"] == 4


def test_a_corrected_file_of_the_same_name_stores_its_records(flywheel_db, tmp_path):
    """The skeleton keyed rows by (file name, line): a corrected re-import stored nothing."""
    path = tmp_path / "export.jsonl"
    bad = [_good(i, timestamp="2026-11-24 10:00:00") for i in range(3)]  # no zone: quarantined
    path.write_bytes(b"".join(_line(r) for r in [_good(0), *bad]))
    first = import_file(flywheel_db, path)
    assert (first.stored, first.quarantined, dict(first.reasons)) == (1, 3, {"invalid_timestamp": 3})
    path.write_bytes(b"".join(_line(r) for r in [_good(0), *(_good(i) for i in range(1, 4))]))
    second = import_file(flywheel_db, path)
    assert not second.same_as
    assert (second.stored, second.already_stored, second.quarantined) == (3, 1, 0)
    assert _rows(flywheel_db, "SELECT count(*) AS n FROM production_logs")[0]["n"] == 4


def test_stdin_is_spooled_and_imported(flywheel_db, tmp_path):
    spooled = spool_stdin(io.BytesIO(_line(_good(1))), tmp_path)
    report = import_file(flywheel_db, spooled, name="stdin")
    assert report.stored == 1 and report.name == "stdin"


def test_raw_storage_is_explicit_and_purged_after_retention(flywheel_db, tmp_path):
    path = tmp_path / "raw.jsonl"
    path.write_bytes(_line(_good(1)) + _line(_good(2)))
    report = import_file(flywheel_db, path, redact=False)
    assert report.stored == 2 and not report.redacted and "RAW" in report.summary() and not report.pii
    rows = _rows(flywheel_db, "SELECT raw, redacted FROM production_logs")
    assert all("@example.com" in r["raw"] and not r["redacted"] for r in rows)
    assert purge_raw(flywheel_db, 30) == 0  # stored just now
    assert purge_raw(flywheel_db, 30, now=datetime.now(timezone.utc) + timedelta(days=31)) == 2


def _hostile_lines() -> list[tuple[bytes, str | None]]:
    """(line, expected reason or None for accepted): every bad input of the issue."""
    good = _good(0)
    deep = {"type": "text", "text": "x", "extra": json.loads("[" * 80 + "]" * 80)}
    return [
        (_line(_good(1)), None),
        (_line(_good(2, request={"model": "m", "messages": [{"role": "user", "content": "a\u2028b\u2029c\u0085d"}]})),
         None),                                                              # separators inside a record
        (json.dumps(_good(3), ensure_ascii=False).encode() + b"\n", None),
        (_line({**_good(4), "timestamp": (T + 4) * 1000}), None),             # epoch milliseconds
        (_line({**_good(5), "timestamp": "2026-11-24T10:00:05+02:00"}), None),
        (_line({**_good(6), "request": json.dumps(good["request"])}), None),  # request as a JSON string
        (b'{"timestamp": 1795514400, "workload_id": "w", trunc\n', "invalid_json"),
        (b"[1, 2]\n", "not_an_object"),
        (_line({k: v for k, v in good.items() if k != "response"}), "missing_field"),
        (_line({**good, "client_id": 42}), "invalid_client_id"),
        (_line({**good, "request": {"messages": "hi"}}), "invalid_messages"),
        (_line({**good, "request": {"messages": []}}), "invalid_messages"),   # empty conversation
        (_line({**good, "response": {"choices": []}}), "invalid_response"),
        (_line({**good, "response": {"choices": [{"message": {"role": "assistant", "content": ""}}]}}),
         "invalid_response"),
        (_line({**good, "request": {"messages": [{"role": "user", "content": "x" * (10 * 1024 * 1024)}]}}),
         "too_large"),                                                        # a 10 MB record
        (_line({**good, "request": {"messages": [{"role": "user", "content": [deep]}]}}), "too_large"),
        (b'{"timestamp": 1795514400, "workload_id": "caf\xe9"}\n', "invalid_utf8"),
        (b'{"timestamp": 1795514400,\x00 "workload_id": "w"}\n', "nul_character"),
        (_line({**good, "timestamp": "yesterday"}), "invalid_timestamp"),
        (_line({**good, "timestamp": -5}), "timestamp_out_of_range"),
        (_line({**good, "timestamp": 4102444800}), "timestamp_out_of_range"),  # 2100-01-01
        (_line({**good, "timestamp": 1795514400000000}), "timestamp_out_of_range"),  # microseconds
        *[(_line({**good, "workload_id": w}), "invalid_workload_id")
          for w in ("tool/router", "../etc", "a..b", "tool router", 'say"hi', "it's", "x" * 300)],
        (b"   \t \n", "blank"),
        (b"\n", "blank"),
    ]


def test_hostile_input_is_quarantined_with_reasons_and_nothing_accepted_is_lost(flywheel_db, tmp_path):
    cases = _hostile_lines()
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"".join(line for line, _ in cases))
    report = import_file(flywheel_db, path)
    expected = [reason for _, reason in cases]
    assert report.lines == len(cases) == report.blank + report.stored + report.already_stored + report.quarantined
    assert report.blank == expected.count("blank")
    assert report.stored == expected.count(None)
    quarantined = _rows(flywheel_db, "SELECT source_ref, reason, field, detail FROM quarantine WHERE stage = 'ingest'")
    by_line = {int(q["source_ref"].rsplit(":", 1)[1]): q for q in quarantined}
    for number, reason in enumerate(expected, start=1):
        if reason in (None, "blank"):
            assert number not in by_line
        else:
            q = by_line[number]
            assert q["reason"] == reason, (number, q)
            assert q["reason"] in REASONS and q["detail"].startswith(f"record hostile.jsonl@")
    # Every accepted record is stored, with its text intact (U+2028 and friends included).
    stored = [json.loads(r["raw"]) for r in _rows(flywheel_db, "SELECT raw FROM production_logs ORDER BY line_no")]
    assert len(stored) == report.stored
    assert stored[1]["request"]["messages"][0]["content"] == "a\u2028b\u2029c\u0085d"
    assert all("\u2028" not in r["raw"] for r in _rows(flywheel_db, "SELECT raw FROM production_logs"))  # escaped


def test_parallel_workers_store_the_same(flywheel_db, tmp_path):
    lines = generate_logs(n_records=300, end=END, seed=4)
    path = tmp_path / "demo.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    one = import_file(flywheel_db, path, workers=1, batch=50)
    rows_one = _rows(flywheel_db, "SELECT line_no, raw FROM production_logs ORDER BY line_no")
    with flywheel_db.cursor() as cur:
        cur.execute("TRUNCATE production_logs, log_imports, quarantine")
    flywheel_db.commit()
    two = import_file(flywheel_db, path, workers=2, batch=50)
    assert (one.stored, one.already_stored, one.quarantined, one.reasons) == (
        two.stored, two.already_stored, two.quarantined, two.reasons)
    assert _rows(flywheel_db, "SELECT line_no, raw FROM production_logs ORDER BY line_no") == rows_one
    assert one.already_stored == int(300 * 0.03)  # the demo's exact duplicate lines are stored once


def test_the_log_source_counts_usable_records_and_fetches_by_id(flywheel_db, tmp_path):
    records = [_good(i) for i in range(6)]
    # Two more asks of request 0 (a retry with a new completion id, and whitespace changed).
    records.append({**_good(0), "timestamp": T + 100, "response": {**_good(0)["response"], "id": "chatcmpl-x"}})
    twin = json.loads(json.dumps(_good(0)))
    twin["request"]["messages"][0]["content"] = "  " + twin["request"]["messages"][0]["content"].replace(" ", "  ")
    records.append({**twin, "timestamp": T + 200})
    path = tmp_path / "src.jsonl"
    path.write_bytes(b"".join(_line(r) for r in records))
    import_file(flywheel_db, path)
    source = PostgresLogSource(flywheel_db)
    start, end = datetime(2026, 11, 24, tzinfo=timezone.utc), datetime(2026, 11, 25, tzinfo=timezone.utc)
    assert source.count_by_workload(start, end) == {"tool_router": 6}  # 8 records, 6 distinct requests
    assert source.count_by_workload(end, end + timedelta(days=1)) == {}
    items = list(source.scan("tool_router", start, end))
    assert len(items) == 8 and all(i.redacted for i in items)
    assert items[0].ref.startswith("src.jsonl@") and items[0].ref.endswith(":1")
    again = {i.fetch_key: i for i in source.fetch([items[3].fetch_key, items[0].fetch_key])}
    assert again[items[0].fetch_key].data == items[0].data and len(again) == 2


def test_hostile_workload_ids_never_reach_sql_or_paths(flywheel_db):
    hostile = "x'; DROP TABLE production_logs;--"
    assert store.fetch_all(flywheel_db, "count_by_workload", {"start": datetime(2020, 1, 1, tzinfo=timezone.utc),
                                                               "end": datetime(2030, 1, 1, tzinfo=timezone.utc)}) == []
    assert list(PostgresLogSource(flywheel_db).scan(hostile, datetime(2020, 1, 1, tzinfo=timezone.utc),
                                                     datetime(2030, 1, 1, tzinfo=timezone.utc))) == []


def test_artifact_jsonl_writers_and_readers_agree_on_line_ends(tmp_path):
    from airflow.sdk import ObjectStoragePath

    from flywheel.adapters import object_storage

    rows = [{"id": "1", "text": "a\u2028b\u2029c\u0085d\re"}, {"id": "2", "text": "plain"}]
    root = ObjectStoragePath(f"file://{tmp_path}")
    uri = object_storage.put_jsonl("datasets", rows, root, run_key="r")
    assert object_storage.read_jsonl(uri) == rows
    assert "\u2028" not in ObjectStoragePath(uri).read_text(encoding="utf-8")  # escaped when written
    with object_storage.JsonlWriter("datasets", root, run_key="r") as out:
        for row in rows:
            out.write(row)
    assert out.uri == uri  # the same content, the same address
    # A predictions file written by another tool with raw separators still reads as two rows.
    from flywheel.adapters.jobs import load_predictions

    (tmp_path / "predictions.jsonl").write_text(
        json.dumps({"id": "a", "output": "x\u2028y"}, ensure_ascii=False) + "\n" + json.dumps({"id": "b", "output": "z"})
        + "\n", encoding="utf-8")
    assert {k: p.output for k, p in load_predictions(f"file://{tmp_path}").items()} == {"a": "x\u2028y", "b": "z"}


def test_the_curate_task_streams_from_the_store_to_a_dataset(flywheel_db, tmp_path, monkeypatch):
    """The Airflow task functions (register, discover, curate) on imported logs, without Airflow
    running: the same code the DAG calls, with the test database as the flywheel_db connection."""
    from flywheel.adapters import airflow_tasks as tasks
    from flywheel.adapters import object_storage
    from flywheel.config import load_config

    monkeypatch.setenv("FLYWHEEL_ARTIFACTS", f"file://{tmp_path}/artifacts")
    driver = type(flywheel_db).__module__.split(".")[0]

    def connect():
        import importlib

        dsn = flywheel_db.dsn if driver == "psycopg2" else flywheel_db.info.dsn
        return importlib.import_module(driver).connect(dsn)

    monkeypatch.setattr(tasks, "get_conn", connect)
    lines = generate_logs(n_records=900, end=END, days=3, seed=5, timestamps="epoch")
    path = tmp_path / "demo.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    report = import_file(flywheel_db, path)
    cfg = load_config()
    plan = tasks.register_run(dag_id="flywheel_on_demand", run_id="manual__t", interval_start=END - timedelta(days=3),
                              interval_end=END, params={"eval_size": 20}, cfg=cfg)
    targets = tasks.discover_workloads(plan, cfg)
    assert {t["workload_id"] for t in targets} == {"tool_router", "support_qa", "invoice_extraction"}
    router = next(t for t in targets if t["workload_id"] == "tool_router")
    dataset = tasks.curate_workload(plan, router, cfg)
    assert dataset["usable"] and dataset["n_eval"] == 20 and dataset["n_accepted"] == router["n_records"]
    assert dataset["n_in"] == dataset["n_accepted"] + dataset["n_quarantined"] + dataset["n_duplicates"]
    rows = object_storage.read_jsonl(dataset["uri"])
    assert len(rows) == dataset["n_eval"] + dataset["n_train"] + dataset["n_val"]
    assert sum(dataset["class_counts"]["eval"].values()) == 20 and report.pii["email"] > 0
    # The records were redacted at import; the dataset's audit counts the placeholders they carry.
    text = json.dumps(rows)
    assert dataset["pii"]["email"] == len({(r["id"], m) for r in rows for m in __import__("re").findall(
        r"<EMAIL_\d+>", json.dumps([r["request"], r["response"]], ensure_ascii=False))}) > 0
    assert "@example.com" not in json.dumps(rows)
    stored = _rows(flywheel_db, "SELECT n_in, n_over_limit, class_counts, warnings FROM datasets")
    assert stored[0]["n_in"] == dataset["n_in"] and stored[0]["class_counts"] == dataset["class_counts"]
    with pytest.raises(Exception, match="eval_size=1 is invalid"):
        tasks.register_run(dag_id="flywheel_on_demand", run_id="manual__bad", interval_start=None,
                           interval_end=None, params={"eval_size": 1}, cfg=cfg)


def test_curation_survives_thousands_of_rejections_mid_scan(flywheel_db, tmp_path, monkeypatch):
    """Rejections are flushed every 1,000 while the server-side cursor is still reading."""
    from flywheel.adapters import airflow_tasks as tasks
    from flywheel.config import load_config

    monkeypatch.setenv("FLYWHEEL_ARTIFACTS", f"file://{tmp_path}/artifacts")
    driver = type(flywheel_db).__module__.split(".")[0]

    def connect():
        import importlib

        dsn = flywheel_db.dsn if driver == "psycopg2" else flywheel_db.info.dsn
        return importlib.import_module(driver).connect(dsn)

    monkeypatch.setattr(tasks, "get_conn", connect)
    # Stored raw rows written by some other tool: 2,500 of them invalid (no answer), 200 valid.
    with flywheel_db.cursor() as cur:
        for i in range(2700):
            record = _good(i)
            if i % 27:
                record["response"]["choices"][0]["message"]["content"] = ""
            cur.execute("INSERT INTO production_logs (source, line_no, ts, workload_id, raw) "
                        "VALUES ('other', %s, %s, 'tool_router', %s)",
                        (i, datetime.fromtimestamp(T + i, tz=timezone.utc), json.dumps(record)))
    flywheel_db.commit()
    cfg = load_config()
    plan = tasks.register_run(dag_id="flywheel_on_demand", run_id="manual__q", interval_start=START_Q,
                              interval_end=START_Q + timedelta(days=2), params={"eval_size": 4, "min_records": 5},
                              cfg=cfg)
    dataset = tasks.curate_workload(plan, {"workload_id": "tool_router", "n_records": 2700}, cfg)
    assert dataset["n_in"] == 2700 and dataset["n_quarantined"] == 2600 and dataset["n_accepted"] == 100
    assert _rows(flywheel_db, "SELECT count(*) AS n FROM quarantine WHERE stage = 'curate'")[0]["n"] == 2600


START_Q = datetime(2026, 11, 24, tzinfo=timezone.utc)
