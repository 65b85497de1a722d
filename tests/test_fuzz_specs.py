"""Fuzz: malformed job files and suites end with a clear error (naming the file), one of the
documented exit codes, never a traceback, and never write into an existing run."""

import copy

import yaml
from hypothesis import given
from hypothesis import strategies as st

from nfopt.cli import main
from tests.helpers import TINY_SUITE, tiny_job

EXIT_CODES = {2, 3, 5}  # invalid file, missing file, a run already there (see `nfopt --help`)

JOB_FIELDS = [
    ("name",),
    ("task",),
    ("outer_steps",),
    ("seed",),
    ("init_from",),
    ("meta_model",),
    ("meta_model", "kind"),
    ("meta_model", "channels"),
    ("meta_model", "step_mult"),
    ("estimator", "kind"),
    ("estimator", "unroll"),
    ("estimator", "sigma"),
    ("inner", "population"),
    ("inner", "horizon"),
    ("inner", "horizon_range"),
    ("inner", "meta_loss"),
    ("meta_optimizer",),
    ("meta_optimizer", "lr"),
    ("workers", "count"),
    ("workers", "num_cpus"),
    ("tracking", "enabled"),
    ("evaluate",),
    ("evaluate", "suite"),
    ("evaluate", "seeds"),
    ("evaluate", "adam_lrs"),
    ("bogus_field",),
]
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["../../etc", "a/b", "nfn_np", "tbptt", "heldout", "no_such_suite", "1e18", "", " "]),
    st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.sampled_from(["kind", "x", "suite"]), st.integers(-2, 2), max_size=2),
)


def _set(d: dict, path: tuple, value) -> dict:
    d = copy.deepcopy(d)
    cur = d
    for part in path[:-1]:
        if not isinstance(cur.get(part), dict):
            cur[part] = {}
        cur = cur[part]
    cur[path[-1]] = value
    return d


def _check(code: int, out: str, path) -> None:
    assert code in EXIT_CODES, (code, out)
    assert "Traceback" not in out, out
    assert "error:" in out, out
    if code == 5:  # a valid job: refused because a run is there (the message names the run's directory)
        assert "already holds a run" in out and "--resume" in out, out
    else:
        assert path.name in "".join(out.split()), out


@given(mutations=st.lists(st.tuples(st.sampled_from(JOB_FIELDS), junk), min_size=1, max_size=3))
def test_malformed_jobs_fail_cleanly_and_never_touch_an_existing_run(tmp_path_factory, mutations):
    import pytest

    tmp = tmp_path_factory.mktemp("fuzz")
    run_dir = tmp / "existing_run"
    run_dir.mkdir()
    (run_dir / "latest.pt").write_bytes(b"a user's checkpoint")
    job = tiny_job(tmp, checkpoint={"dir": str(run_dir)}).model_dump(mode="json")
    for path, value in mutations:
        job = _set(job, path, value)
    job_file = tmp / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLUMNS", "1000")
        import contextlib
        import io

        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(["run", str(job_file), "--no-ray"])
    _check(code, err.getvalue() + out.getvalue(), job_file)
    assert sorted(p.name for p in run_dir.iterdir()) == ["latest.pt"]
    assert (run_dir / "latest.pt").read_bytes() == b"a user's checkpoint"


SUITE_FIELDS = [
    ("name",),
    ("tasks",),
    ("tasks", 0, "dataset"),
    ("tasks", 0, "dataset", "name"),
    ("tasks", 0, "dataset", "size"),
    ("tasks", 0, "dataset", "options"),
    ("tasks", 0, "model", "kind"),
    ("tasks", 0, "model", "width"),
    ("tasks", 0, "model", "hidden_layers"),
    ("tasks", 0, "batch_size"),
    ("tasks", 0, "horizon"),
    ("tasks", 0, "loss"),
    ("tasks", 1, "dataset", "options", "n_in"),
]


def _set_suite(d, path, value):
    d = copy.deepcopy(d)
    cur = d
    for part in path[:-1]:
        cur = cur[part] if isinstance(cur, list) or isinstance(cur.get(part), dict | list) else cur.setdefault(part, {})
    cur[path[-1]] = value
    return d


@given(mutations=st.lists(st.tuples(st.sampled_from(SUITE_FIELDS), junk), min_size=1, max_size=2))
def test_malformed_suites_fail_cleanly(tmp_path_factory, mutations):
    import contextlib
    import io

    tmp = tmp_path_factory.mktemp("fuzz_suite")
    suite = yaml.safe_load(TINY_SUITE)
    for path, value in mutations:
        try:
            suite = _set_suite(suite, path, value)
        except (TypeError, KeyError, IndexError, AttributeError):
            suite = value  # the mutation replaced a container: the whole suite is junk
            break
    suite_file = tmp / "suite.yaml"
    suite_file.write_text(yaml.safe_dump(suite))
    err, out = io.StringIO(), io.StringIO()
    args = ["evaluate", "--suite", str(suite_file), "--no-ray", "--no-track", "--tasks", "not_a_task"]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(args)
    text = err.getvalue() + out.getvalue()
    assert code in EXIT_CODES and "Traceback" not in text, (code, text)
    assert "error:" in text, text
