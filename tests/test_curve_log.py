"""The sweep driver reads each trial's curve files incrementally (CurveLog.read_new)."""

from trainers.run_dir import CurveLog, TailCursor


def rec(step):
    return {"step": step, "loss": 10.0 / step}


def test_incremental_reads_add_up_to_the_whole_file(tmp_path):
    log = CurveLog(tmp_path / "curves.jsonl")
    assert log.read_new(TailCursor()) == ([], TailCursor())  # no file yet
    cursor, seen = TailCursor(), []
    for first in (1, 4, 9):
        log.append([rec(s) for s in range(first, first + 3)])
        new, cursor = log.read_new(cursor)
        seen += new
    assert [r["step"] for r in seen] == [1, 2, 3, 4, 5, 6, 9, 10, 11]
    assert seen == log.read()
    assert log.read_new(cursor) == ([], cursor)  # nothing new, nothing re-read


def test_a_line_being_written_waits_for_its_end(tmp_path):
    path = tmp_path / "curves.jsonl"
    log = CurveLog(path)
    log.append([rec(1)])
    with open(path, "a") as fh:
        fh.write('{"step": 2, "lo')  # the writer is mid-line
    new, cursor = log.read_new(TailCursor())
    assert [r["step"] for r in new] == [1]
    with open(path, "a") as fh:
        fh.write('ss": 5.0}\n')
    new, cursor = log.read_new(cursor)
    assert new == [{"step": 2, "loss": 5.0}]


def test_truncation_on_resume_starts_the_reader_over(tmp_path):
    log = CurveLog(tmp_path / "curves.jsonl")
    log.append([rec(s) for s in range(1, 7)])
    _, cursor = log.read_new(TailCursor())
    log.truncate_after(3)  # a resumed worker drops what was trained after its checkpoint...
    log.append([rec(s) for s in range(4, 9)])  # ...and trains it again, past where the reader was
    new, _ = log.read_new(cursor)
    assert [r["step"] for r in new] == list(range(1, 9))  # the whole new file: no torn line, no gap
