"""`nfopt zoo` on the tiny job specs: build (resumable), generalization, tickets."""

import json

from nfopt.cli import main
from tests.helpers import shipped_job


def test_zoo_then_generalization_then_tickets(tmp_path, capsys):
    zoo_dir = tmp_path / "zoo"
    assert main(["zoo", shipped_job(tmp_path, "zoo_tiny", out=str(zoo_dir)), "--no-ray"]) == 0
    assert len(list((zoo_dir / "shards").glob("*.pt"))) == 2
    assert main(["zoo", shipped_job(tmp_path, "zoo_tiny", out=str(zoo_dir)), "--no-ray"]) == 0  # nothing left to do
    gen = shipped_job(tmp_path, "generalization_tiny", zoo=str(zoo_dir), out=str(tmp_path / "gen"))
    assert main(["zoo", gen]) == 0
    results = json.loads((tmp_path / "gen" / "results.json").read_text())
    assert set(results["results"]) == {"nfn_np", "nfn_hnp", "nft", "statnn"}
    assert all(-1 <= r["tau"] <= 1 for r in results["results"].values())
    assert (tmp_path / "gen" / "scatter.png").read_bytes()[:4] == b"\x89PNG"
    assert "Kendall" in capsys.readouterr().out
    assert main(["zoo", gen]) == 5  # a result is there: never replaced without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["zoo", shipped_job(tmp_path, "tickets_tiny", out=str(tmp_path / "tk"))]) == 0
    tickets = json.loads((tmp_path / "tk" / "results.json").read_text())["results"]
    assert set(tickets) == {"nfn_np", "imp", "random", "dense"}
    # a second run with other predictors (asked to replace the first's table) reuses IMP's masks
    # (same IMP settings) and ablates them
    job = shipped_job(
        tmp_path,
        "tickets_tiny",
        out=str(tmp_path / "tk"),
        predictors=["np_io", "hnp"],
        magnitude=True,
        loss="ordinal",
        ensemble=2,
    )
    capsys.readouterr()
    assert main(["zoo", job]) == 5
    assert json.loads((tmp_path / "tk" / "results.json").read_text())["results"] == tickets  # untouched
    assert main(["zoo", job, "--overwrite"]) == 0
    assert "IMP masks reused" in capsys.readouterr().err
    again = json.loads((tmp_path / "tk" / "results.json").read_text())
    assert set(again["results"]) == {"nfn_np_io", "nfn_hnp", "imp", "random", "dense"}
    assert again["results"]["imp"] == tickets["imp"] and set(again["gap_recovered"]) == {"nfn_np_io", "nfn_hnp"}
    assert again["ensemble"] == 2  # two predictors of each kind, ranked by their mean logit


def test_bad_experiment_files(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: zoo\nname: x\nruns: -1\n")
    assert main(["zoo", str(bad)]) == 2
    assert "runs" in capsys.readouterr().err
    bad.write_text("experiment: painting\n")
    assert main(["zoo", str(bad)]) == 2
    assert main(["zoo", str(tmp_path / "none.yaml")]) == 3
