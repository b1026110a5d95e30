"""`cascadevsr bench`: lists the checkout's benchmarks and runs them, collecting their JSON lines."""

from __future__ import annotations

import json

from cascadevsr.bench import QUICK_ARGS, available, benchmarks_dir
from cascadevsr.cli import main


def test_every_benchmark_script_is_listed_with_its_summary_and_has_smoke_settings(capsys):
    scripts = sorted(p.stem for p in benchmarks_dir().glob("*.py"))
    assert list(available()) == scripts and all(available().values())
    assert set(QUICK_ARGS) == set(scripts)  # a new benchmark needs its --quick settings
    assert main(["bench"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in scripts)


def test_a_quick_run_appends_tagged_json_lines(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    for _ in range(2):  # appends, never overwrites
        assert main(["bench", "attention", "--quick", "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2
    assert records[0]["benchmark"] == "attention" and records[0]["args"] == ["--flops-only"]
    flops = records[0]["result"]["flops"]["wan8_17f"]
    assert 0 < flops["sparse_local_over_full_total"] < 1


def test_unknown_or_failing_benchmarks_are_one_sentence(capsys):
    assert main(["bench", "attentoin"]) == 2
    assert "unknown benchmark(s) attentoin" in capsys.readouterr().err
    assert main(["bench", "attention", "--args=--no-such-flag"]) == 2
    assert "benchmark attention failed with exit code 2" in capsys.readouterr().err
