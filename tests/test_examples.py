"""The examples run end to end in their tiny variants: a pretrained nfopt optimizer and AdamW
train a Transformer LM and a BatchNorm CNN (whole models, a cosine schedule, weight decay)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["transformer_lm", "bn_cnn_fashion"])
def test_example_trains_both_optimizers_and_plots(name, tmp_path, capsys):
    assert _load(name).main(["--tiny", "--out", str(tmp_path), "--adamw-lrs", "1e-3,3e-3"]) == 0
    results = json.loads((tmp_path / f"{name}.json").read_text())
    assert set(results) == {"adamw_lr=0.001", "adamw_lr=0.003", "nfn_np_small"}
    for r in results.values():
        assert len(r["curve"]) > 5 and all(math.isfinite(v) for v in r["curve"])
        assert all(math.isfinite(v) for v in r["final"].values())
        assert r["curve"][-1] != r["curve"][0]  # it trained
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("RESULT ") and "tuned AdamW (best of the grid" in out


def test_missing_data_is_exit_3_naming_the_directory(tmp_path, capsys):
    empty = tmp_path / "corpus"
    empty.mkdir()
    assert _load("transformer_lm").main(["--tiny", "--data", str(empty), "--out", str(tmp_path)]) == 3
    assert str(empty) in capsys.readouterr().err


def test_a_bad_lr_grid_is_exit_2_naming_the_flag(tmp_path, capsys):
    assert _load("bn_cnn_fashion").main(["--tiny", "--out", str(tmp_path), "--adamw-lrs", "fast"]) == 2
    assert "--adamw-lrs" in capsys.readouterr().err
