"""engine.predict on real tiny trainings: the Predictor rebuilt from a checkpoint scores raw
inputs exactly as the engine's evaluation did (AUROC per OOD set, accuracy), with voting
over snapshots and with the DICE score, and keeps 95% of the validation ID data in."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from engine.predict import Predictor
from engine.train import train

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # msp, weight voting (the preset)
        ["eval.primary=dice", "voting.mode=predictions", "voting.snapshots_per_epoch=2"],
        ["eval.primary=energy", "moon.enabled=false", "sparsity.method=dense"],
    ],
    ids=["msp-weights", "dice-predictions", "energy-dense"],
)
def test_predictor_matches_the_engine_evaluation(overrides: list[str], small, tmp_path) -> None:
    result = train(small("epochs=8", "voting.epochs=2", "moon.warmup_epochs=2", *overrides))
    predictor = Predictor.from_checkpoint(result.checkpoint(), result.suite)
    predictor.save(tmp_path / "p.pt")
    predictor = Predictor.load(tmp_path / "p.pt")  # from here on no data is needed
    suite = result.suite.to("cpu")

    def raw(x):
        return x * suite.norm_std + suite.norm_mean

    test_id = predictor.predict(raw(suite.test.x))
    accuracy = np.mean(
        [p.class_index == y for p, y in zip(test_id, suite.test.y.tolist(), strict=True)]
    )
    assert accuracy == pytest.approx(result.metrics["accuracy"], abs=1e-9)
    id_scores = [p.ood_score for p in test_id]
    for ood in suite.ood:
        ood_scores = [p.ood_score for p in predictor.predict(raw(ood.test))]
        labels = [1] * len(id_scores) + [0] * len(ood_scores)
        auroc = roc_auc_score(labels, id_scores + ood_scores)
        assert auroc == pytest.approx(result.metrics[f"auroc/{ood.name}"], abs=1e-6), ood.name
    val_in = [p.in_distribution for p in predictor.predict(raw(suite.val.x))]
    assert np.mean(val_in) >= 0.95
    assert all(p.in_distribution == (p.ood_score >= predictor.threshold) for p in test_id)
