"""Training-time pruning: the trainer and the methods of the survey's "when to prune" axis."""

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit import datasets
from prunekit.targets import select_targets
from prunekit.train import (
    GMP,
    EarlyBird,
    GroupLasso,
    LotteryTicket,
    NetworkSlimming,
    RigL,
    SoftFilterPruning,
    TrainConfig,
    Trainer,
    drop_and_grow,
)
from prunekit.train.at_init import grasp_importance, synflow_importance
from prunekit.train.during import dense_gradients


@pytest.fixture(scope="module")
def digits():
    x, y = datasets.load_digits()  # real data, bundled with scikit-learn
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(x), generator=g)
    return (x[idx[:1400]], y[idx[:1400]]), (x[idx[1400:]], y[idx[1400:]])


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10))


def bn_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


QUICK = dict(epochs=2, batch_size=32, lr=0.2, progress=False)


# ---- the trainer -----------------------------------------------------------------------------------


def test_trainer_learns_digits(digits):
    train, val = digits
    hist = Trainer(mlp(), train, val, TrainConfig(**{**QUICK, "epochs": 3})).fit()
    assert hist.final["val_accuracy"] > 0.85
    assert [e["epoch"] for e in hist.epochs] == [1, 2, 3]


def test_resume_after_kill_matches_uninterrupted_run(digits, tmp_path):
    train, val = digits
    cfg = TrainConfig(**{**QUICK, "epochs": 3, "checkpoint_every": 7})
    reference = mlp()
    Trainer(reference, train, val, cfg, method="gmp", sparsity=0.6).fit()

    class Kill(pk.train.Callback):
        def on_step_end(self, trainer):
            if trainer.total_steps_done == 31:  # mid-epoch, after the checkpoint at step 28
                raise KeyboardInterrupt

    model = mlp()
    with pytest.raises(KeyboardInterrupt):
        Trainer(model, train, val, cfg, method="gmp", sparsity=0.6, callbacks=[Kill()], checkpoint_dir=tmp_path).fit()
    fresh = mlp()  # a new process would start from a new model object
    hist = Trainer(fresh, train, val, cfg, method="gmp", sparsity=0.6, checkpoint_dir=tmp_path).fit(resume=True)
    ref_state, state = reference.state_dict(), fresh.state_dict()
    assert set(ref_state) == set(state)
    for k in ref_state:
        torch.testing.assert_close(state[k], ref_state[k], rtol=0, atol=1e-6)
    assert len(hist.epochs) == 3


def test_corrupt_checkpoint_is_refused(digits, tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(pk.CheckpointError, match="delete it"):
        Trainer(mlp(), digits[0], None, TrainConfig(**QUICK), checkpoint_dir=tmp_path).fit(resume=True)


def test_distillation_needs_teacher_and_trains(digits):
    train, val = digits
    with pytest.raises(pk.ConfigError, match="teacher"):
        Trainer(mlp(), train, val, TrainConfig(**QUICK, kd_alpha=0.5))
    teacher = mlp()
    Trainer(teacher, train, val, TrainConfig(**QUICK)).fit()
    student = mlp()
    hist = Trainer(
        student, train, val, TrainConfig(**QUICK, kd_alpha=0.7), teacher=teacher, method="magnitude", sparsity=0.5
    ).fit()
    assert hist.final["val_accuracy"] > 0.8
    assert hist.final["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_bad_training_input():
    with pytest.raises(pk.DataError):
        Trainer(mlp(), (torch.zeros(0, 64), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(pk.ConfigError):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(pk.InvalidSparsityError):
        Trainer(mlp(), (torch.zeros(4, 64), torch.zeros(4, dtype=torch.long)), method="rigl", sparsity=1.2)
    with pytest.raises(pk.UnknownNameError):
        Trainer(mlp(), (torch.zeros(4, 64), torch.zeros(4, dtype=torch.long)), method="rigl2", sparsity=0.5)


# ---- pruning at initialisation -----------------------------------------------------------------------


def test_synflow_closed_form_on_two_layer_linear_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False))
    w1, w2 = net[0].weight.detach().abs(), net[1].weight.detach().abs()
    targets = select_targets(net, prune_classifier=True).targets
    scores = synflow_importance(net, targets, torch.randn(5, 3))
    # R = 1^T |W2| |W1| 1: dR/dW1[i,j] = sum_k |W2[k,i]|, dR/dW2[k,i] = sum_j |W1[i,j]|
    expected1 = w1 * w2.sum(dim=0)[:, None]
    expected2 = w2 * w1.sum(dim=1)[None, :]
    torch.testing.assert_close(scores["0"], expected1)
    torch.testing.assert_close(scores["1"], expected2)


def test_synflow_is_data_free():
    class NoData:
        def __iter__(self):
            raise AssertionError("synflow must not read data")

    net = bn_cnn()
    x = torch.randn(1, 1, 8, 8)
    before = copy.deepcopy(net.state_dict())
    report = pk.prune(net, "synflow", sparsity=0.8, example_inputs=x, calibration=NoData(), rounds=10, measure=False)
    assert report.sparsity == pytest.approx(0.8, abs=0.01)
    for k, v in before.items():  # scoring ran on a copy: BN statistics untouched
        if "running" in k:
            assert torch.equal(net.state_dict()[k], v)
    with pytest.raises(pk.MissingDataError, match="example_inputs"):
        pk.prune(bn_cnn(), "synflow", sparsity=0.5, measure=False)


def test_grasp_importance_equals_w_times_hessian_gradient():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Tanh(), nn.Linear(3, 2, bias=False))
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 1, 0, 1, 0])
    targets = select_targets(net, prune_classifier=True).targets
    got = grasp_importance(net, targets, [(x, y)], temperature=2.0)
    w = torch.cat([net[0].weight.reshape(-1), net[2].weight.reshape(-1)]).detach()

    def loss_of(flat):
        a, b = flat[:9].reshape(3, 3), flat[9:].reshape(2, 3)
        return nn.functional.cross_entropy(torch.tanh(x @ a.T) @ b.T / 2.0, y)

    g = torch.autograd.functional.jacobian(loss_of, w)
    H = torch.autograd.functional.hessian(loss_of, w)
    expected = w * (H @ g)
    torch.testing.assert_close(torch.cat([got["0"].reshape(-1), got["2"].reshape(-1)]), expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("method", ["random", "erk", "snip", "grasp", "synflow"])
def test_pai_methods_in_the_trainer(digits, method):
    train, val = digits
    hist = Trainer(
        mlp(),
        train,
        val,
        TrainConfig(**QUICK),
        method=method,
        sparsity=0.8,
        method_options={"rounds": 5} if method == "synflow" else {},
    ).fit()
    assert hist.final["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert hist.final["val_accuracy"] > 0.3  # well above chance (0.1) after two short epochs


# ---- during training --------------------------------------------------------------------------------


def test_gmp_follows_cubic_schedule(digits):
    train, _ = digits
    seen = {}

    class Watch(pk.train.Callback):
        def on_step_end(self, trainer):
            seen[trainer.step] = pk.apply.masks.masked_sparsity(trainer.model)

    cfg = TrainConfig(**{**QUICK, "epochs": 4})
    t = Trainer(mlp(), train, None, cfg, method=GMP(0.8, start=0.1, end=0.7, updates=10), callbacks=[Watch()])
    t.fit()
    total = t.total_steps
    sched = t.callbacks[0].pruner.schedule
    t0, t1 = sched.start, sched.end
    assert t0 == int(0.1 * total) and t1 == int(0.7 * total)
    for step in (t0 + sched.frequency, (t0 + t1) // 2, t1, total):
        assert seen[step] == pytest.approx(sched.sparsity_at(step), abs=2e-3), step
    s_mid = 0.8 * (1 - (1 - ((((t0 + t1) // 2 - t0) // sched.frequency) * sched.frequency) / (t1 - t0)) ** 3)
    assert seen[(t0 + t1) // 2] == pytest.approx(s_mid, abs=2e-3)


def test_drop_and_grow_exact():
    w = torch.tensor([[0.5, -0.1, 0.0, 0.0], [2.0, 0.0, 0.3, 0.0]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
    grad = torch.tensor([[0.0, 0.0, 0.9, 0.1], [0.0, 0.05, 0.0, 0.7]])
    new = drop_and_grow(w, mask, grad.abs(), 2)
    # drops the two smallest active |w| (-0.1 and 0.3), grows the two largest |g| among inactive (0.9, 0.7)
    assert new.tolist() == [[True, False, True, False], [True, False, False, True]]
    assert new.sum() == mask.sum()


def test_dynamic_sparse_training_warns_when_no_update_step_fits(digits):
    train, _ = digits
    cfg = TrainConfig(**{**QUICK, "epochs": 1})
    with pytest.warns(UserWarning, match="no drop-and-grow step will run"):
        trainer = Trainer(mlp(), train, None, cfg, method=RigL(0.8, update_every=10_000))
        trainer.fit()
    assert trainer.callbacks[0].updates == 0


def test_rigl_keeps_sparsity_and_grows_by_gradient(digits):
    train, _ = digits
    grown_ok = []

    class Check(pk.train.Callback):
        def on_after_backward(self, trainer):
            rigl = trainer.callbacks[0]
            if rigl.is_update_step(trainer):
                self.before = {n: m.clone() for n, _, _, m in pk.apply.masks.masked_parameters(trainer.model)}
                self.grads = dense_gradients(trainer.model, *trainer.last_batch)

        def on_step_end(self, trainer):
            if not hasattr(self, "before") or trainer.step % 10:
                return
            for n, _module, _, m in pk.apply.masks.masked_parameters(trainer.model):
                old = self.before[n]
                assert m.sum() == old.sum()  # constant sparsity per layer
                grown = m & ~old
                if grown.any():
                    # every grown position has a gradient at least as large as any position left inactive
                    # (among those inactive before the update)
                    left = ~m & ~old
                    g = self.grads[n].abs()
                    grown_ok.append(g[grown].min() >= g[left].max() - 1e-12)
            del self.before

    model = mlp()
    cfg = TrainConfig(**{**QUICK, "epochs": 3})
    trainer = Trainer(
        model, train, None, cfg, method=RigL(0.8, update_every=10, drop_fraction=0.3), callbacks=[Check()]
    )
    hist = trainer.fit()
    assert grown_ok and all(grown_ok)
    assert trainer.callbacks[0].updates > 3
    assert hist.final["sparsity"] == pytest.approx(0.8, abs=0.01)
    # ERK: the layers have different sparsities
    layers = {n: 1 - m.float().mean().item() for n, _, _, m in pk.apply.masks.masked_parameters(model)}
    assert max(layers.values()) - min(layers.values()) > 0.05


def test_set_keeps_sparsity(digits):
    hist = Trainer(
        mlp(),
        digits[0],
        digits[1],
        TrainConfig(**QUICK),
        method="set",
        sparsity=0.7,
        method_options={"update_every": 5},
    ).fit()
    assert hist.final["sparsity"] == pytest.approx(0.7, abs=0.01)


def test_imp_rewinds_survivors_to_rewind_step(digits):
    train, _ = digits
    rewind_step = 5
    snaps = {}

    class Snap(pk.train.Callback):
        def on_step_end(self, trainer):
            if trainer.round == 0 and trainer.step == rewind_step:
                snaps["w"] = pk.apply.masks.original_parameter(trainer.model[1]).detach().clone()

        def wants_another_round(self, trainer):
            return False

    lt = LotteryTicket(0.75, rounds=2, rewind_step=rewind_step)
    rounds_seen = []

    class AtRound(pk.train.Callback):
        def on_round_begin(self, trainer):  # right after the first prune + rewind, before round 1 trains
            rounds_seen.append(trainer.round)
            if trainer.round == 1:
                w = pk.apply.masks.original_parameter(model[1]).detach()
                mask = pk.get_mask(model[1])
                rewound.append(torch.equal(w[mask], snaps["w"][mask]))
                assert 1 - mask.float().mean().item() > 0.3

    rewound = []
    model = mlp()
    cfg = TrainConfig(**{**QUICK, "epochs": 1})
    trainer = Trainer(model, train, None, cfg, method=lt, callbacks=[Snap(), AtRound()])
    hist = trainer.fit()
    assert rounds_seen == [0, 1, 2] and rewound == [True]
    assert trainer.round == 2
    assert hist.final["sparsity"] == pytest.approx(0.75, abs=0.01)


def test_slimming_penalises_bn_scales_and_removes_channels(digits):
    train, val = digits
    model = bn_cnn()
    x = train[0][:1]
    hist = Trainer(model, train, val, TrainConfig(**QUICK), method=NetworkSlimming(0.5, l1=1e-3)).fit()
    assert any("slimming" in n for n in hist.notes)
    assert model(x).shape == (1, 10)
    # half the BN channels are gone (removed physically or held at zero)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    total_before = 8 + 16
    alive = sum(int((m.weight != 0).sum()) for m in bns)
    assert alive <= total_before - 12 + 1


def test_group_lasso_gradient_and_channels(digits):
    model = mlp()
    gl = GroupLasso(0.5, lam=0.1)
    t = Trainer(model, digits[0], None, TrainConfig(**QUICK))
    t.optimizer = t.make_optimizer()
    x, y = digits[0][0][:32], digits[0][1][:32]
    nn.functional.cross_entropy(model(x), y).backward()
    g_before = model[1].weight.grad.clone()
    gl.on_after_backward(t)
    w = model[1].weight.detach()
    torch.testing.assert_close(model[1].weight.grad - g_before, 0.1 * w / w.norm(dim=1, keepdim=True))
    Trainer(model, digits[0], None, TrainConfig(**QUICK), method=gl).fit()
    rows_zero = (model[1].weight == 0).all(dim=1).float().mean().item()
    assert rows_zero == pytest.approx(0.5, abs=0.03)


def test_sfp_zeroes_weak_filters_each_epoch_then_masks(digits):
    model = bn_cnn()
    zero_rows = []

    class Look(pk.train.Callback):
        def on_epoch_end(self, trainer, metrics):
            w = model[3].weight.detach().reshape(16, -1)
            zero_rows.append(int((w == 0).all(dim=1).sum()))

    Trainer(model, digits[0], None, TrainConfig(**QUICK), method=SoftFilterPruning(0.25), callbacks=[Look()]).fit()
    assert zero_rows == [4, 4]  # SFP ran before the watcher each epoch
    assert pk.get_mask(model[3]) is not None and int((~pk.get_mask(model[3])).reshape(16, -1).all(dim=1).sum()) == 4


def test_early_bird_finds_a_stable_mask(digits):
    model = bn_cnn()
    eb = EarlyBird(0.5, l1=1e-3, window=2, epsilon=0.5)
    hist = Trainer(model, digits[0], digits[1], TrainConfig(**{**QUICK, "epochs": 4}), method=eb).fit()
    assert eb.found_epoch is not None and eb.found_epoch >= 2
    assert any("early-bird" in n for n in hist.notes)
    assert "mask_distance" in hist.epochs[eb.found_epoch - 1]


def test_training_methods_explain_themselves_in_prune():
    with pytest.raises(pk.ConfigError, match="Trainer"):
        pk.prune(mlp(), "rigl", sparsity=0.5, measure=False)
