"""Pretrained learned optimizers: shipped with the package, loaded by name (also in a fresh
process, weights_only), shipped from a finished run without ever replacing one silently."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import nfopt
from nfopt.lopt import LearnedUpdateRule, list_pretrained, load_pretrained, save_optimizer, ship_pretrained
from nfopt.lopt.pretrained import PRETRAINED_DIR

ROOT = Path(__file__).resolve().parents[2]

SHIPPED = ("nfn_np_small", "nft_small", "mlp_small")


def test_the_shipped_optimizers_are_listed_with_their_budget():
    names = list_pretrained()
    assert set(SHIPPED) <= set(names), names
    for name in SHIPPED:
        meta = load_pretrained(name).metadata
        made_by = meta["spec"]["name"]  # phase 1 (pretrain_<kind>), 2 (..._schedule) or 3 (..._width)
        assert meta["inner_steps"] > 0 and meta["task"] in ("mix_small", "mix_wide")  # both disjoint from heldout
        assert made_by in (f"pretrain_{name[:-6]}{phase}" for phase in ("", "_schedule", "_width"))
        assert (ROOT / "jobs" / "meta" / f"{made_by}.yaml").is_file()
        assert (PRETRAINED_DIR / f"{name}.json").is_file() and (PRETRAINED_DIR / f"{name}.md").is_file()
    assert nfopt.list_pretrained() == names


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_optimizer_trains_any_mlp_by_name(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 24), nn.Tanh(), nn.Linear(24, 3))
    x, y = torch.randn(128, 10), torch.randint(0, 3, (128,))
    opt = nfopt.load_optimizer(name)(model.parameters(), num_steps=60)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
        first = first if first is not None else loss.item()
    assert torch.isfinite(loss) and loss.item() < 0.8 * first


def test_load_by_name_in_a_fresh_process():
    code = (
        "import nfopt, torch\n"
        "t = nfopt.load_optimizer('nfn_np_small')\n"
        "m = torch.nn.Linear(4, 2)\n"
        "opt = t(m.parameters())\n"
        "m(torch.randn(3, 4)).sum().backward(); opt.step()\n"
        "print(sorted(nfopt.list_pretrained()), t.rule.kind)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    assert "nfn_np" in out.stdout and "nfn_np_small" in out.stdout


def test_ship_and_load_from_a_directory_and_refuse_to_overwrite(tmp_path):
    run = tmp_path / "run"
    rule = LearnedUpdateRule("mlp", meta_model={"hidden": 4})
    save_optimizer(rule, run / "learned_optimizer.pt", metadata={"job": "x", "inner_steps": 10, "task": "t"})
    (run / "job.json").write_text("{}")
    reg = tmp_path / "registry"
    ship_pretrained(run, "tiny_mlp", directory=reg)
    assert list(list_pretrained(reg)) == ["tiny_mlp"]
    assert load_pretrained("tiny_mlp", reg).rule.config() == rule.config()
    with pytest.raises(FileExistsError, match="overwrite"):
        ship_pretrained(run, "tiny_mlp", directory=reg)
    ship_pretrained(run, "tiny_mlp", directory=reg, overwrite=True)
    with pytest.raises(KeyError, match="tiny_mlp"):
        load_pretrained("other", reg)
    with pytest.raises(ValueError, match="lower-case"):
        ship_pretrained(run, "../escape", directory=reg)
    with pytest.raises(FileNotFoundError, match="finish the run"):
        ship_pretrained(tmp_path / "nothing", "x", directory=reg)


def test_unknown_names_say_what_is_shipped():
    with pytest.raises(FileNotFoundError, match="nfn_np_small"):
        nfopt.load_optimizer("no_such_optimizer")


def test_cli_lists_and_shows_shipped_optimizers(capsys, monkeypatch):
    from nfopt.cli import main

    monkeypatch.setenv("COLUMNS", "1000")
    assert main(["optimizers", "list"]) == 0
    assert "nfn_np_small" in capsys.readouterr().out
    assert main(["optimizers", "show", "nfn_np_small"]) == 0
    out = capsys.readouterr().out
    steps = nfopt.load_optimizer("nfn_np_small").metadata["inner_steps"]
    assert '"kind": "nfn_np"' in out and f'"inner_steps": {steps}' in out and "held-out suite" in out.lower()
    assert main(["pretrained", "show", "no_such"]) == 2
    assert "nfn_np_small" in capsys.readouterr().out
