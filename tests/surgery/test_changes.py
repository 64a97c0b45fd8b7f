"""What a structural change did, read back from the model (:mod:`prunekit.surgery.changes`)."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.surgery.changes import layer_sparsity, output_axis, recurrent_notes


def test_output_axis_follows_the_weight_layout() -> None:
    assert output_axis(nn.Linear(3, 4)) == 0
    assert output_axis(nn.Conv2d(3, 4, 3)) == 0
    assert output_axis(nn.ConvTranspose2d(3, 4, 3)) == 1  # weight [in, out, kh, kw]


def test_layer_sparsity_is_the_share_of_output_units_lost() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    old = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with torch.no_grad():  # layer 0 loses 2 of its 6 outputs, layer 2 keeps its 2
        model[0] = nn.Linear(4, 4)
        model[2] = nn.Linear(4, 2)
    assert layer_sparsity(model, old) == {"0": 1 - 4 / 6, "2": 0.0}
    assert layer_sparsity(model, old, targets=["2"]) == {"2": 0.0}


def test_recurrent_notes_say_what_happened_to_every_rnn() -> None:
    model = nn.Sequential(nn.LSTM(3, 8), nn.GRU(8, 5))
    old = {"0.weight_hh_l0": (32, 8), "1.weight_hh_l0": (15, 5)}
    model[0] = nn.LSTM(3, 6)  # 2 hidden units removed
    notes = recurrent_notes(model, old)
    assert notes[0].startswith("0 (LSTM): hidden units 8 -> 6")
    assert notes[1].startswith("1 (GRU): kept whole, hidden_size 5")
