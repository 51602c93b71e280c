"""The committed plateau curves of notebook 5 (weights/plateau/, made by weights/plateau_curves.py): the logs
are there, were made with the script's recipe on the same batches, and each record is what the script
writes.  The curves are not re-made here (an hour on two cores)."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
# log file -> (arm, pair task); grown-nsp is the grown arm trained with NSP instead of SOP, for notebook 7
LOGS = {"reference": ("reference", "sop"), "grown": ("grown", "sop"), "grown-nsp": ("grown", "nsp")}


@pytest.fixture(scope="module")
def logs() -> dict[str, dict]:
    return {name: json.loads((WEIGHTS / "plateau" / f"{name}.json").read_text()) for name in LOGS}


@pytest.fixture(scope="module")
def script_defaults() -> dict:
    environment = dict(os.environ)
    sys.path.insert(0, str(WEIGHTS))
    try:
        import plateau_curves
    finally:
        sys.path.remove(str(WEIGHTS))
    # importing it (as notebook 5 does) must not limit threads behind the importer's back: a changed
    # NUMBA_NUM_THREADS breaks the next Numba compilation in the same process
    assert dict(os.environ) == environment
    defaults = vars(plateau_curves.build_parser().parse_args(["--arm", "grown", "--out", "x"]))
    return {k: v for k, v in defaults.items() if k not in plateau_curves.NOT_SETTINGS}


def test_both_arms_share_the_recipe_of_the_script(logs, script_defaults):
    for name, log in logs.items():
        arm, pair_task = LOGS[name]
        assert log["arm"] == arm
        assert log["settings"] == {**script_defaults, "arm": arm, "pair_task": pair_task}, \
            f"{name}.json was made with other settings"
        assert log["recipe"].startswith("python weights/plateau_curves.py --arm " + arm)


def test_records_follow_the_schedule(logs):
    for name, log in logs.items():
        arm, settings, records = log["arm"], log["settings"], log["records"]
        steps = [r["step"] for r in records]
        assert steps == list(range(0, settings["steps"] + 1, settings["log_every"])), f"{name}: steps logged"
        for r in records:
            grown_yet = arm == "reference" or r["step"] > settings["grow_at"]
            depth = settings["layers"] if grown_yet else 1
            assert r["depth"] == depth == len(r["attention_entropy"]), f"{name} step {r['step']}"
            assert all(0 < e <= r["uniform_entropy"] + 1e-9 for e in r["attention_entropy"])
            assert 0 <= r["heldout_mlm_acc"] <= 1 and 0 <= r["heldout_sop_acc"] <= 1
            assert math.isfinite(r["heldout_mlm_loss"])
            assert (r["train_mlm_loss"] is None) == (r["step"] == 0)
        assert len({r["uniform_entropy"] for r in records}) == 1, "the held-out batches changed during the run"
    # the same held-out batches for both SOP arms
    assert logs["reference"]["records"][0]["uniform_entropy"] == logs["grown"]["records"][0]["uniform_entropy"]


def test_pair_tasks_were_measured_on_the_study_batches(logs):
    from tinyalbert.ablations import EVAL_PAIRS

    for name, log in logs.items():
        pairs = log["pair_tasks"]
        assert pairs["step"] == log["settings"]["steps"], f"{name}: measured on the final model"
        assert pairs["sop_count"] == pairs["nsp_count"] == EVAL_PAIRS
        assert all(0 <= pairs[k] <= 1 for k in ("sop_accuracy", "nsp_accuracy", "mlm_accuracy"))


def test_attention_targets_cover_every_application(logs):
    for name, log in logs.items():
        targets = log["attention_targets"]
        assert targets["step"] == log["settings"]["steps"]
        assert len(targets["applications"]) == log["records"][-1]["depth"], name
        for shares in targets["applications"]:
            assert 0 <= shares["special_tokens"] + shares["itself"] + shares["neighbours"] <= 1 + 1e-9
            assert 0 < shares["neighbours_if_uniform"] < 1
