"""Mid-training figures: `Run.evaluate()` gives the validation figures without disturbing
the run; early-stopped trials (told to Optuna with such figures) never lead."""

from __future__ import annotations

import math

import pytest
import torch

from engine.train import Run


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_evaluated_run_continues_exactly_as_unevaluated(small, method: str) -> None:
    cfg = small(f"sparsity.method={method}", "epochs=6", "voting.epochs=2")
    plain, probed = Run(cfg), Run(cfg)
    seen = []
    while not plain.done:
        plain.train_epoch()
        probed.train_epoch()
        seen.append(probed.evaluate())
    # Same losses and figures every epoch, same weights, masks and generator at the end.
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in probed.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in plain.history]
    for name, tensor in plain.model.state_dict().items():
        assert torch.equal(tensor, probed.model.state_dict()[name]), name
    assert torch.equal(plain.generator.get_state(), probed.generator.get_state())
    assert plain.finish().metrics == probed.finish().metrics
    # The figures change as the model learns; they are the final evaluation's val names.
    assert seen[0]["val/accuracy"] != seen[-1]["val/accuracy"]
    assert all(math.isfinite(m["val/auroc_near"]) for m in seen)


def test_midrun_figures_are_the_final_evaluations_val_figures(small) -> None:
    cfg = small("voting.mode=off", "epochs=4")
    run = Run(cfg)
    while not run.done:
        run.train_epoch()
    mid = run.evaluate()
    final = run.finish().metrics  # without voting: the same single model, fully evaluated
    expected = {k: v for k, v in final.items() if k.startswith("val/") or k.startswith("density")}
    assert mid == expected
    assert "accuracy" not in mid and "auroc_near" not in mid  # the test parts stay unseen


def test_leaders_are_chosen_among_trials_that_ran_to_the_end(tmp_path) -> None:
    """An early-stopped trial is COMPLETE for the sampler, but never a leader, even when its
    (mid-training) figures dominate, and it hides no finished trial from the front."""
    import optuna

    from sweep.state import SweepState
    from sweep.status import leaders

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url, directions=["maximize", "maximize"])
    # (values, early_stopped, constraint violation); by hand the front of the finished,
    # feasible trials is {1, 2}: 0 is stopped, 3 is dominated by 1, 4 is infeasible.
    cases = [
        ((0.95, 0.95), True, 0.0),
        ((0.8, 0.9), False, 0.0),
        ((0.9, 0.8), False, 0.0),
        ((0.7, 0.85), False, 0.0),
        ((0.99, 0.99), False, 0.02),
    ]
    for values, stopped, violation in cases:
        trial = study.ask()
        trial.set_constraint("accuracy", violation)
        if stopped:
            trial.set_user_attr("early_stopped", True)
        study.tell(trial, list(values))
    state = SweepState(
        name="s",
        space={"objectives": [{"metric": "val/auroc_near"}, {"metric": "val/accuracy"}]},
        space_source="",
        tracking_uri="",
        storage_url=url,
        experiment_id="",
        parent_run_id="",
    )
    rows = leaders(state)
    assert [r["optuna"] for r in rows] == [2, 1]  # Optuna's numbers, best first objective first
    assert rows[0]["val/auroc_near"] == 0.9 and rows[0]["val/accuracy"] == 0.8
