"""The one criterion interface and the statistics collector, on hand-computed cases."""

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.calibration import Calibration, collect
from prunekit.criteria import BUILTIN, CRITERIA, CriterionLevelError, ScoreInput, criteria_for, resolve_criterion
from prunekit.layout import weight_layout


def _input(module, stats=None, name="m"):
    from prunekit.calibration import LayerStats

    layout = weight_layout(module)
    return ScoreInput(layout.to_canonical(module.weight.detach()), stats or LayerStats(name), layout, name)


def test_seventeen_criteria_registered_with_levels():
    assert len(BUILTIN) == 17
    assert set(criteria_for("element")) >= {"magnitude", "wanda", "sparsegpt", "grad-weight", "taylor", "synflow"}
    assert "influence" not in criteria_for("element") and "influence" in criteria_for("layer")
    assert resolve_criterion("snip").name == "grad-weight"
    assert resolve_criterion("hessian").name == "obd"
    assert resolve_criterion("l0.5").name == "l0.5"
    with pytest.raises(pk.UnknownNameError):
        resolve_criterion("zigzag")


def test_level_refusal_names_what_works():
    with pytest.raises(CriterionLevelError) as info:
        CRITERIA.get("apoz").check_level("element")
    assert "channel" in str(info.value) and "magnitude" in str(info.value)
    assert isinstance(info.value, pk.PrunekitError)


def test_wanda_uses_input_norms_of_the_collected_data():
    lin = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.5, -0.5]]))
    x = torch.tensor([[1.0, 0.0, 2.0], [1.0, 3.0, 0.0]])
    stats = collect(lin, {"": lin}, {"act_norm"}, x)[""]
    assert torch.allclose(stats.act_sq.float(), torch.tensor([2.0, 9.0, 4.0]))
    scores = CRITERIA.get("wanda").element(_input(lin, stats, ""))
    expect = lin.weight.abs() * torch.tensor([2.0, 9.0, 4.0]).sqrt()
    assert torch.allclose(scores, expect)


def test_padding_enters_no_activation_statistic():
    emb = nn.Embedding(10, 4)
    lin = nn.Linear(4, 2)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lin = emb, lin

        def forward(self, input_ids, attention_mask=None):
            return self.lin(self.emb(input_ids))

    m = M()
    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    padded = collect(m, {"lin": lin}, {"act_norm"}, {"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])})
    clean = collect(m, {"lin": lin}, {"act_norm"}, [ids[:1], ids[1:, :2]])
    assert padded["lin"].rows == 5
    assert torch.allclose(padded["lin"].act_sq, clean["lin"].act_sq)


def test_apoz_bn_gamma_and_conv_xtx():
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([0.5, -2.0, 1.0]))
    x = torch.randn(2, 2, 6, 6)
    st = collect(net, {"0": net[0], "3": net[3]}, {"act_zeros", "bn_gamma", "xtx"}, x)
    assert torch.allclose(st["0"].bn_gamma.float(), torch.tensor([0.5, 2.0, 1.0]))
    assert st["3"].bn_gamma is None  # feeds no normalisation layer
    assert st["0"].xtx.shape == (2 * 9, 2 * 9) and st["3"].xtx.shape == (3 * 9, 3 * 9)
    with torch.no_grad():
        y = net[0](x)
    assert torch.allclose(st["0"].act_nonpos.float(), (y <= 0).sum((0, 2, 3)).float())
    score = CRITERIA.get("apoz").element(_input(net[0], st["0"], "0"))
    assert torch.allclose(score[:, 0, 0, 0], 1 - (y <= 0).float().mean((0, 2, 3)))
    with pytest.raises(pk.MissingDataError, match="ignore="):
        CRITERIA.get("bn-scale").element(_input(net[3], st["3"], "3"))


def test_taylor_unit_is_squared_signed_sum_and_grad_weight_is_not():
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, 0.1]]))
    from prunekit.calibration import LayerStats

    g = torch.tensor([[1.0, -1.0], [0.5, 0.5]])  # row 0: contributions cancel
    s = _input(lin, LayerStats("m", grad=g))
    taylor, gw = CRITERIA.get("taylor"), CRITERIA.get("grad-weight")
    t_units = taylor.unit(taylor.contribution(s).sum(1), torch.tensor([2, 2]))
    gw_units = gw.unit(gw.contribution(s).sum(1), torch.tensor([2, 2]))
    assert t_units[0] < t_units[1]  # (1 - 1)^2 = 0 < (0.5 + 0.05)^2
    assert gw_units[0] > gw_units[1]  # mean |g w|: 1.0 > 0.275


def test_gradients_for_every_batch_form_of_a_language_model():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    layer = model.model.layers[0].mlp.down_proj
    ids = torch.randint(0, 50, (2, 8))
    forms = {
        "tokens": ids,
        "pairs": [(ids, ids)],
        "dict": [{"input_ids": ids, "labels": ids}],
        "loss": lambda m: m(input_ids=ids, labels=ids).loss,
    }
    grads = {k: collect(model, {"d": layer}, {"grad"}, v)["d"].grad for k, v in forms.items()}
    for k in ("pairs", "dict", "loss"):
        assert torch.allclose(grads[k], grads["tokens"], atol=1e-6), k
    with pytest.raises(pk.DataError, match="no targets"):
        collect(nn.Linear(3, 2), {"": nn.Linear(3, 2)}, {"grad"}, torch.randn(4, 3))


def test_calibration_refuses_strings_and_empty():
    with pytest.raises(pk.DataError, match="string"):
        Calibration.of("some text")
    with pytest.raises(pk.MissingDataError):
        Calibration.of(None)
    with pytest.raises(pk.DataError, match="empty"):
        list(Calibration.of([]).batches())


def test_multihead_attention_out_proj_inputs_are_collected_exactly():
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        ref, ref_w = mha(x, x, x)
    from prunekit.calibration.collect import modules_called

    seen = []
    h = mha.out_proj.register_forward_hook(lambda m, a, o: seen.append(a[0]))
    with torch.no_grad(), modules_called(mha, [mha.out_proj]):
        out, w = mha(x, x, x)
    h.remove()
    assert torch.allclose(out, ref, atol=1e-6) and torch.allclose(w, ref_w, atol=1e-6)
    assert len(seen) == 1 and "forward" not in vars(mha)  # restored
    st = collect(mha, {"out_proj": mha.out_proj}, {"act_norm"}, [((x, x, x))])
    assert st["out_proj"].rows == 15
