"""Voting: snapshot timing, averaged weights = mean of the snapshots, mask zeros kept, BN."""

from __future__ import annotations

import pytest
import torch

from engine.sparsity import maskable_weights, nonzero_within_mask
from engine.train import train
from engine.voting import Voter, snapshot_steps


def test_snapshot_steps_spread_evenly() -> None:
    assert snapshot_steps(10, 1) == [9]
    assert snapshot_steps(10, 2) == [4, 9]
    assert snapshot_steps(10, 3) == [2, 5, 9]
    assert snapshot_steps(3, 5) == [0, 1, 2]  # at most one per step


def test_averaged_weights_are_the_mean_of_the_snapshots(small) -> None:
    # Same seed: the predictions arm keeps exactly the snapshots the weights arm folds in.
    common = ("voting.snapshots_per_epoch=2", "sparsity.method=set")
    averaged = train(small("voting.mode=weights", *common))
    kept = train(small("voting.mode=predictions", *common))
    assert len(kept.models) == 3 * 2
    avg_state = averaged.models[0].state_dict()
    for name in avg_state:
        mean = torch.stack([m.state_dict()[name] for m in kept.models]).mean(0)
        torch.testing.assert_close(avg_state[name], mean, rtol=1e-5, atol=1e-6)
    # The mask froze before averaging: the average keeps its zeros.
    assert nonzero_within_mask(maskable_weights(averaged.models[0]).items(), averaged.masks)
    assert averaged.masks.global_density() == pytest.approx(0.1, abs=2e-3)
    # And the averaged model is not just the last snapshot.
    last = kept.models[-1].state_dict()
    assert any(not torch.allclose(avg_state[n], last[n]) for n in avg_state)


def test_batch_norm_recomputed_for_the_average(small) -> None:
    result = train(small("model.name=cnn", "model.width=8", "voting.snapshots_per_epoch=2"))
    model = result.models[0]
    bn = model.features[1]
    x = result.suite.train.x
    # update_bn resets the statistics and takes a cumulative mean over the training batches.
    with torch.no_grad():
        conv_out = [model.features[0](xb) for xb in x.split(result.config.batch_size)]
    expected = torch.stack([c.mean(dim=(0, 2, 3)) for c in conv_out]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected, rtol=1e-4, atol=1e-5)


def test_voter_running_mean_by_hand() -> None:
    net = torch.nn.Linear(2, 1)
    voter = Voter("weights")
    values = [1.0, 2.0, 6.0]
    for v in values:
        with torch.no_grad():
            net.weight.fill_(v)
        voter.add(net)
    final = voter.finalize(net, torch.zeros(4, 2), batch_size=2)[0]
    assert final.weight.flatten().tolist() == pytest.approx([3.0, 3.0])
    assert voter.count == 3
