"""Token merging (ToMe) and token pruning (EViT): exactness at zero, sizes, padding, restoring, refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision.models.vision_transformer import VisionTransformer

import prunekit.dynamic as dyn
from prunekit.dynamic.tokens import attentive_prune, bipartite_merge, initial_state, unmerge
from prunekit.errors import ConfigError, ModelError, UnsupportedModuleError
from tests.conftest import assert_unchanged, snapshot

transformers = pytest.importorskip("transformers")


def _tv_vit() -> VisionTransformer:
    torch.manual_seed(0)
    m = VisionTransformer(
        image_size=32, patch_size=8, num_layers=4, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5
    ).eval()
    torch.nn.init.normal_(m.heads.head.weight)  # torchvision zero-initialises the head
    return m


def _bert() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return transformers.BertModel(cfg).eval()


def _hf_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64
    )
    return transformers.ViTModel(cfg).eval()


def _padded_ids() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (3, 12), generator=g)
    am = torch.ones(3, 12, dtype=torch.long)
    am[1, 7:] = 0
    am[2, 4:] = 0
    return ids, am


def _timm_vit(**kw) -> torch.nn.Module:
    """A small timm ViT (``VisionTransformer``, or ``VisionTransformerDistilled`` with ``distilled=True``) with
    weights large enough that merging changes the output; ``kw`` go to the constructor."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    cls = timm.models.deit.VisionTransformerDistilled if kw.pop("distilled", False) else timm.models.VisionTransformer
    m = cls(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=4, num_classes=5, **kw).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.Linear):
            torch.nn.init.normal_(mod.weight, std=0.2)
    return m


def _timm_models():
    try:
        import timm  # noqa: F401
    except ImportError:
        return []
    img = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    return [
        ("timm-vit", _timm_vit(qk_norm=True, init_values=0.1), lambda m: m(img)),
        ("timm-deit-distilled", _timm_vit(distilled=True), lambda m: m(img)),
        ("timm-vit-registers", _timm_vit(reg_tokens=2), lambda m: m(img)),
    ]


def _models():
    img = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ids, am = _padded_ids()
    return [
        ("torchvision-vit", _tv_vit(), lambda m: m(img)),
        ("hf-vit", _hf_vit(), lambda m: m(pixel_values=img).last_hidden_state),
        ("bert", _bert(), lambda m: m(input_ids=ids, attention_mask=am).last_hidden_state),
        *_timm_models(),
    ]


@torch.no_grad()
def test_zero_reduction_is_bit_identical_and_restore_gives_the_dense_model_back():
    for name, model, run in _models():
        before = snapshot(model)
        dense = run(model)
        with dyn.merge_tokens_(model, r=0):
            assert torch.equal(run(model), dense), name
        with dyn.prune_tokens_(model, keep_rate=1.0):
            assert torch.equal(run(model), dense), name
        with dyn.merge_tokens_(model, ratio=0.0):
            assert torch.equal(run(model), dense), name
        for make in (
            lambda model=model: dyn.merge_tokens_(model, r=2),
            lambda model=model: dyn.prune_tokens_(model, keep_rate=0.5),
        ):
            make()
            out = run(model)
            assert out.shape == dense.shape, name  # tokens are unmerged at the end
            assert not torch.allclose(out, dense), name
            assert_unchanged(model, before)  # state_dict untouched while patched
            assert dyn.restore_(model) is True
            assert torch.equal(run(model), dense), name
        assert dyn.restore_(model) is False
        assert_unchanged(model, before)


@torch.no_grad()
def test_token_counts_per_block():
    m = _tv_vit()
    x = torch.randn(1, 3, 32, 32)
    with dyn.merge_tokens_(m, r=2) as p:
        m(x)
        assert p.report()["tokens_per_block"] == [17, 15, 13, 11]
        assert p.report()["metric"] == "keys"  # the paper's choice for ViTs
    with dyn.merge_tokens_(m, r=100) as p:  # at most half the unprotected tokens per block
        m(x)
        assert p.report()["tokens_per_block"] == [17, 9, 5, 3]
    with dyn.prune_tokens_(m, keep_rate=0.5) as p:  # default layers for 4 blocks: 1, 2, 3
        m(x)
        # 16 patches -> class + 8 kept + 1 fused = 10 -> class + ceil(0.5 * 9) = 5 + 1 fused = 7
        assert p.report()["tokens_per_block"] == [17, 17, 10, 7]
    assert dyn.default_prune_layers(12) == [3, 6, 9]


@torch.no_grad()
def test_each_family_reimplements_its_block_exactly():
    # ratio=0.01 runs every block through prunekit's own forward pass (the reduce step active) but merges
    # nothing on these short sequences: the outputs must be the model's own
    for name, model, run in _models():
        dense = run(model)
        with dyn.merge_tokens_(model, ratio=0.01) as p:
            out = run(model)
            assert p.report()["tokens_per_block"][-1] == p.report()["input_tokens"], name  # nothing merged
        assert torch.allclose(out, dense, atol=1e-5, rtol=0), name


@torch.no_grad()
def test_timm_prefix_tokens_are_never_merged_or_pruned():
    # a DeiT's class and distillation tokens, and a ViT's register tokens, keep their own slots (size 1)
    for kw, prefix in ((dict(distilled=True), 2), (dict(reg_tokens=3), 4)):
        m = _timm_vit(**kw)
        x = torch.randn(1, 3, 32, 32)
        tokens = 16 + prefix
        with dyn.merge_tokens_(m, r=100) as p:  # as many as allowed: half of the unprotected tokens per block
            m(x)
            counts = p.report()["tokens_per_block"]
        expected = [tokens]
        for _ in range(3):
            expected.append(prefix + (expected[-1] - prefix + 1) // 2)
        assert counts == expected, (kw, counts)
        with dyn.prune_tokens_(m, keep_rate=0.5) as p:  # blocks 1, 2, 3 prune: prefix + ceil(rest / 2) + 1
            m(x)
            assert p.report()["tokens_per_block"][:3] == [tokens, tokens, prefix + 8 + 1], kw
    # by hand: 6 tokens, the first 2 protected; the closest pair is (0, 1), then (2, 1): neither may merge
    x = torch.arange(6, dtype=torch.float32).view(1, 6, 1)
    metric = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [-1.0, 0.0], [-1.0, 0.1]]])
    x0, st = initial_state(x, None)
    y, st2 = bipartite_merge(x0, metric, st, 1, protect_first=2)
    assert st2.size.tolist() == [[1.0, 1.0, 1.0, 1.0, 2.0]]  # token 4 went into token 5, the prefix untouched
    assert y[0, :, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.5]


def test_timm_refusals():
    m = _timm_vit(class_token=False, global_pool="avg")
    before = snapshot(m)
    with pytest.raises(UnsupportedModuleError, match="no class token"):
        dyn.prune_tokens_(m, keep_rate=0.5)
    assert dyn.find_patch(m) is None
    assert_unchanged(m, before)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), dyn.merge_tokens_(m, r=2):  # ToMe needs no class token
        assert m(x).shape == (1, 5)
        with pytest.raises(ModelError, match="attn_mask"):  # a mask the re-implemented blocks cannot honour
            m(x, attn_mask=torch.zeros(1, 1, 16, 16))


def test_bipartite_merge_by_hand():
    # 6 tokens, no class token; A = positions 0, 2, 4; B = 1, 3, 5. Token 2 is a copy of token 3 in the metric.
    x = torch.tensor([[[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]]])
    metric = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0], [-1.0, 0.2], [0.0, -1.0]]])
    x0, st = initial_state(x, None)
    st.size = torch.tensor([[1.0, 1.0, 3.0, 1.0, 1.0, 1.0]])  # token 2 already stands for 3 inputs
    y, st2 = bipartite_merge(x0, metric, st, 1, protect_first=False)
    assert y.shape == (1, 5, 1)
    # token 2 (size 3, value 3) merges into token 3 (size 1, value 4): (3*3 + 4) / 4
    assert torch.allclose(y[0, :, 0], torch.tensor([1.0, 2.0, 13 / 4, 5.0, 6.0]))
    assert st2.size.tolist() == [[1.0, 1.0, 4.0, 1.0, 1.0]]
    assert st2.src.tolist() == [[0, 1, 2, 2, 3, 4]]
    assert torch.equal(unmerge(y, st2)[0, :, 0], torch.tensor([1.0, 2.0, 13 / 4, 13 / 4, 5.0, 6.0]))


def test_padding_is_never_merged_into_real_tokens():
    # the padding tokens are exact copies of real ones (the most similar pairs): they must still not merge in
    real_part = torch.randn(1, 5, 8)
    x = torch.cat([real_part, real_part[:, :3]], 1)  # 5 real + 3 padding
    real = torch.tensor([[True] * 5 + [False] * 3])
    x0, st = initial_state(x, real)
    y, st2 = bipartite_merge(x0, x0, st, 3, protect_first=True)
    assert y.shape[1] == 6  # (5 - 1) // 2 = 2 real merges; one padding token dropped to make r = 2 per row
    assert st2.real.tolist() == [[True, True, True, False, False, False]]
    assert float(st2.size[st2.real].sum()) == 5.0  # real sizes still count the 5 real inputs, and only them
    assert int(st2.src[0, :5].max()) <= 2  # every real input is carried by a real token


def test_attentive_prune_by_hand():
    x = torch.arange(6, dtype=torch.float32).view(1, 6, 1)
    cls_attn = torch.tensor([[0.5, 0.05, 0.3, 0.05, 0.1, 0.0]])
    x0, st = initial_state(x, None)
    y, st2 = attentive_prune(x0, cls_attn, st, 0.4)  # keep ceil(0.4 * 5) = 2 of 5: tokens 2 and 4
    assert y[0, :3, 0].tolist() == [0.0, 2.0, 4.0]
    # fused: tokens 1, 3, 5 weighted by attention 0.05, 0.05, 0.0 -> (1 + 3) / 2
    assert y[0, 3, 0].item() == pytest.approx(2.0)
    assert st2.size.tolist() == [[1.0, 1.0, 1.0, 3.0]]
    assert st2.src.tolist() == [[0, 3, 1, 3, 2, 3]]


@torch.no_grad()
@pytest.mark.parametrize("method", ["tome", "evit"])
def test_padded_batch_gives_each_row_what_it_gets_alone(method):
    m = _bert()
    ids, am = _padded_ids()
    patch = dyn.merge_tokens_(m, r=2) if method == "tome" else dyn.prune_tokens_(m, keep_rate=0.5)
    with patch:
        y = m(input_ids=ids, attention_mask=am).last_hidden_state
        for b in range(3):
            n = int(am[b].sum())
            alone = m(input_ids=ids[b : b + 1, :n], attention_mask=am[b : b + 1, :n]).last_hidden_state
            assert torch.allclose(y[b, :n], alone[0], atol=1e-5), b
    # left padding, at the encoder (positions are the model's business): the same row as alone
    h = torch.randn(2, 10, 32)
    real = torch.ones(2, 10, dtype=torch.bool)
    real[1, :3] = False
    with dyn.merge_tokens_(m, r=2):
        y = m.encoder(h, attention_mask=real[:, None, None, :].expand(2, 1, 10, 10)).last_hidden_state
        alone = m.encoder(h[1:, 3:]).last_hidden_state
    assert torch.allclose(y[1, 3:], alone[0], atol=1e-5)


@torch.no_grad()
def test_merging_exact_duplicates_changes_nothing():
    # ToMe with proportional attention on pairs of identical tokens: merging each pair is exact
    m = _bert()
    h = torch.randn(2, 6, 32).repeat_interleave(2, dim=1)
    dense = m.encoder(h).last_hidden_state
    with dyn.merge_tokens_(m, r=[6, 0, 0, 0], protect_cls=False) as p:
        merged = m.encoder(h).last_hidden_state
        assert p.report()["tokens_per_block"] == [12, 6, 6, 6]
    assert torch.allclose(merged, dense, atol=1e-5)
    tv = _tv_vit()
    h = torch.randn(1, 8, 32).repeat_interleave(2, dim=1)
    dense = tv.encoder.layers(h)
    with dyn.merge_tokens_(tv, r=[8, 0, 0, 0], protect_cls=False):
        assert torch.allclose(tv.encoder.layers(h), dense, atol=1e-5)


def test_refusals_leave_the_model_unchanged():
    import torchvision

    cnn = torchvision.models.resnet18()
    before = snapshot(cnn)
    with pytest.raises(UnsupportedModuleError, match="Supported: torchvision VisionTransformer"):
        dyn.merge_tokens_(cnn, r=4)
    with pytest.raises(UnsupportedModuleError):
        dyn.prune_tokens_(cnn, keep_rate=0.5)
    assert dyn.find_patch(cnn) is None and "forward" not in cnn.__dict__
    assert_unchanged(cnn, before)
    m = _tv_vit()
    for bad in (
        dict(r=-1),
        dict(r=1.5),
        dict(r=[1, 2]),
        dict(),
        dict(r=1, ratio=0.1),
        dict(ratio=0.6),
        dict(r=1, metric="cosine"),
    ):
        with pytest.raises(ConfigError):
            dyn.merge_tokens_(m, **bad)
    for bad in (dict(keep_rate=0.0), dict(keep_rate=1.5), dict(keep_rate=0.5, layers=[7])):
        with pytest.raises(ConfigError):
            dyn.prune_tokens_(m, **bad)
    assert dyn.find_patch(m) is None
    with dyn.merge_tokens_(m, r=1):
        with pytest.raises(ConfigError, match="restore_"):
            dyn.prune_tokens_(m, keep_rate=0.5)
        with pytest.raises(ConfigError, match="cannot be copied"):
            copy.deepcopy(m)


@torch.no_grad()
def test_real_minilm_padded_batch():
    from prunekit import datasets

    if not datasets.is_installed("minilm"):
        pytest.skip("all-MiniLM-L6-v2 is not installed: prunekit data install minilm")
    d = datasets.minilm_model_dir()
    model = transformers.AutoModel.from_pretrained(d).eval()
    tok = transformers.AutoTokenizer.from_pretrained(d)
    sents = [
        "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who never took up any book "
        "but the Baronetage.",
        "She was nobody.",
        "Anne had been a very pretty girl, but her bloom had vanished early.",
    ]
    enc = tok(sents, padding=True, return_tensors="pt")

    def embed(e):
        h = model(**e).last_hidden_state
        w = e["attention_mask"][..., None].float()
        return torch.nn.functional.normalize((h * w).sum(1) / w.sum(1), dim=-1)

    dense = embed(enc)
    with dyn.merge_tokens_(model, r=0):
        assert torch.equal(embed(enc), dense)
    with dyn.merge_tokens_(model, ratio=0.1) as patch:
        merged = embed(enc)
        tokens = patch.report()["tokens_per_block"]
        alone = torch.cat([embed(tok(s, return_tensors="pt")) for s in sents])
    assert tokens[-1] < tokens[0]  # the long sentences did merge
    assert torch.allclose(merged, alone, atol=1e-5)
    print((merged * dense).sum(-1))
    assert float((merged * dense).sum(-1).min()) > 0.9


def test_gradient_checkpointing_is_refused():
    m = _timm_vit()
    m.set_grad_checkpointing(True)  # blocks recomputed in backward on other token counts
    with pytest.raises(ConfigError, match="gradient checkpointing"):
        dyn.merge_tokens_(m, r=2)
    m.set_grad_checkpointing(False)
    with dyn.merge_tokens_(m, r=2):
        pass
