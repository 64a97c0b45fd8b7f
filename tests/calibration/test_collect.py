"""Tests of :mod:`prunekit.calibration.collect`: the statistics collector (activation norms, zeros, BatchNorm
scales, XtX, gradients) on hand-computed cases, read by the criteria."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.calibration import collect
from prunekit.criteria import CRITERIA, ScoreInput
from prunekit.layout import weight_layout


def _input(module, stats=None, name="m"):
    from prunekit.calibration import LayerStats

    layout = weight_layout(module)
    return ScoreInput(layout.to_canonical(module.weight.detach()), stats or LayerStats(name), layout, name)


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
    padded = collect(
        m, {"lin": lin}, {"act_norm"}, {"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    )
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


@pytest.mark.parametrize(
    "conv",
    [nn.Conv1d(2, 3, 3, padding="same"), nn.Conv1d(2, 3, 3, padding="valid"), nn.Conv2d(2, 3, 3, padding="same")],
)
def test_conv_xtx_with_string_padding_is_refused_by_name(conv):
    # a Conv1d once read the first letter of "same" as its padding and failed inside torch with a TypeError
    x = torch.randn(2, 2, *([6] * (conv.weight.dim() - 2)))
    with pytest.raises(pk.ModelError, match=f"padding='{conv.padding}'.*ignore="):
        collect(conv, {"c": conv}, {"xtx"}, x)


def test_gradients_for_every_batch_form_of_a_language_model():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
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


def test_gradient_criteria_accumulate_over_calibration_batches() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    batches = [(torch.randn(5, 4), torch.randint(0, 2, (5,))) for _ in range(2)]
    st = collect(model, {"0": model[0]}, {"grad", "grad_sq"}, batches)["0"]
    grads = [torch.autograd.grad(F.cross_entropy(model(x), y), model[0].weight)[0] for x, y in batches]
    torch.testing.assert_close(st.grad, grads[0] + grads[1])
    torch.testing.assert_close(st.grad_sq, grads[0].square() + grads[1].square())
    for name in ("taylor-channel", "hessian-channel"):
        m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        pk.prune(m, name, sparsity=0.5, example_inputs=torch.randn(1, 4), calibration=batches, measure=False)
        assert m[0].out_features == 4 and m[2].in_features == 4
