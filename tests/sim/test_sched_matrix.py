"""bench/sched_matrix.py's --diagnose: the classes it gives a missed cell, on made-up sweeps
whose answers are known, and a real quick run whose diagnosis must agree with its table."""

import importlib.util
import os
import re
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "..", "bench", "sched_matrix.py")
spec = importlib.util.spec_from_file_location("sched_matrix", SCRIPT)
sched_matrix = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sched_matrix)

FIFO = {"makespan_s": 1200.0, "mean_wait_s": 300.0, "max_wait_s": 600.0}
GREEDY = {"makespan_s": 1000.0, "mean_wait_s": 100.0, "max_wait_s": 1800.0}


def report(makespan, mean, longest):
    return {"makespan_s": makespan, "mean_wait_s": mean, "max_wait_s": longest}


def test_targets_are_one_percent_of_the_peers():
    assert sched_matrix.targets(report(1010, 101, 606), FIFO, GREEDY) == (True, True, True)
    assert sched_matrix.targets(report(1011, 101.2, 606.1), FIFO, GREEDY) == (False, False, False)


def test_a_dial_value_that_meets_every_target_is_named():
    sweep = [(0, report(1000, 150, 500)), (4, report(1000, 100, 590)),
             (1e9, report(1000, 100, 1800))]
    assert sched_matrix.diagnose(sweep, FIFO, GREEDY) == ("dial", "met at aging 4")


def test_disjoint_mean_and_max_ranges_are_a_conflict_with_the_figures_at_their_edges():
    sweep = [(0, report(1000, 150, 500)), (2, report(1000, 130, 600)),
             (8, report(1000, 100, 900)), (1e9, report(1000, 100, 1800))]
    kind, text = sched_matrix.diagnose(sweep, FIFO, GREEDY)
    assert kind == "conflict"
    # The lowest aging that gives greedy's mean (8), with its max wait against FIFO's; the
    # highest that keeps FIFO's max (2), with its mean against greedy's; greedy's own max.
    assert text == ("mean ok at aging 8 at the lowest, where max wait = 1.50 x fifo's; "
                    "max ok at aging 2 at the highest, where mean wait = 1.30 x greedy's; "
                    "greedy's own max wait = 3.00 x fifo's")


def test_mean_and_max_together_only_where_the_makespan_misses():
    sweep = [(0, report(1100, 150, 500)), (3, report(1050, 100, 600)),
             (1e9, report(1000, 100, 1800))]
    assert sched_matrix.diagnose(sweep, FIFO, GREEDY) == (
        "makespan", "mean and max met together only at aging 3, where the makespan misses")


def test_a_target_no_dial_value_meets_is_said():
    sweep = [(0, report(1000, 150, 700)), (1e9, report(1000, 120, 1800))]
    kind, text = sched_matrix.diagnose(sweep, FIFO, GREEDY)
    assert kind == "conflict"
    assert text.startswith("no aging meets the mean target; no aging meets the max target;")


@pytest.mark.skipif(not os.access(os.environ.get("GPUMGR_BIN", ""), os.X_OK),
                    reason="GPUMGR_BIN names no gpumgr binary")
def test_a_quick_run_diagnoses_every_missed_cell_and_ends_with_the_summary():
    run = subprocess.run(["/usr/bin/python3", SCRIPT, "--quick", "--diagnose", "--gpumgr",
                          os.environ["GPUMGR_BIN"]], capture_output=True, text=True)
    assert run.returncode in (0, 1), run.stderr
    lines = run.stdout.splitlines()
    cells = [l for l in lines if re.match(r"^\w+ +\d\.\d +\d+ \|", l)]
    missed = [l for l in cells if not l.endswith("| -")]
    why = [l for l in lines if l.startswith("why ")]
    assert len(cells) == 12
    assert len(why) == len(missed)
    # Each diagnosis names its cell, in the table's order.
    for w, m in zip(why, missed):
        assert w.split(":")[0].split()[1:] == m.split("|")[0].split()
    # The default's own aging (2) cannot meet a cell the default missed: the sweep replays
    # the same scheduler, so a "met at aging ... 2" would mean the two runs disagree.
    for w in why:
        if ": dial: met at aging " in w:
            assert "2" not in w.split("met at aging ")[1].split(", ")
    counts = re.search(r"diagnosis of the (\d+) missed cells .*: met at another aging (\d+); "
                       r"mean and max targets conflict \(no aging meets both\) (\d+); mean "
                       r"and max met together only where the makespan misses (\d+)$",
                       lines[-2])
    assert counts, lines[-2]
    n, a, b, c = map(int, counts.groups())
    assert n == len(missed) == a + b + c
    assert lines[-1].startswith("summary: best-fit meets the target in ")
    assert f"in {12 - n} of 12 cells" in lines[-1]
