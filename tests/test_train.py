from dataclasses import dataclass

import pytest
import torch

from benchmarks.data import batches, make_synthetic
from benchmarks.models import ModelSpec, build_model, topology
from benchmarks.topology import weight_of
from benchmarks.float_cache import float_model, state_digest
from benchmarks.harness.calibration import reestimate_batchnorm
from benchmarks.train import TrainConfig, evaluate, train
from methods import Method, ParamGroup, Phase

CFG = TrainConfig(epochs=2, batch_size=128, lr=0.1)


@pytest.mark.slow
def test_synthetic_training_lowers_loss_and_beats_chance():
    data = make_synthetic(n_train=1024, n_test=256)
    model = build_model(ModelSpec("tinycnn"))
    hist = []
    train(Method(), model, data, CFG, on_epoch=hist.append, progress=False)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert evaluate(model, data.test) > 40.0  # chance is 10%


class ToyMethod(Method):
    """Uses every hook: a per-channel gain in its own Adam group, a penalty, two phases, and a structural
    change (the gain tensor shrinks) after the first step."""

    @dataclass(frozen=True)
    class Config:
        weight: float = 0.01

    def __init__(self, config=None):
        super().__init__(config)
        self.calls = {k: 0 for k in ("prepare", "phase", "penalty", "backward", "step", "metrics")}

    def prepare(self, model):
        self.calls["prepare"] += 1
        self.gain = torch.nn.Parameter(torch.ones(4))
        return model

    def phases(self, epochs):
        return [Phase(1), Phase(1, optimizer="adam", lr=1e-3, schedule="constant", grad_clip=1.0)]

    def on_phase_start(self, model, phase):
        self.calls["phase"] += 1

    def param_groups(self, model):
        return [ParamGroup([self.gain], lr=0.1)]

    def penalty(self, model, task_loss):
        self.calls["penalty"] += 1
        return self.config.weight * self.gain.abs().sum()

    def after_backward(self, model):
        self.calls["backward"] += 1
        assert self.gain.grad is not None

    def after_step(self, model, optimizers):
        self.calls["step"] += 1
        if self.gain.numel() == 4:
            from benchmarks.topology import slice_param_
            slice_param_(self.gain, 0, torch.tensor([0, 2]), optimizers)

    def epoch_metrics(self, model):
        self.calls["metrics"] += 1
        return {"gain_sum": float(self.gain.detach().sum())}


def test_loop_calls_every_hook_and_copes_with_shrinking_parameters():
    data = make_synthetic(n_train=512, n_test=128)
    model = build_model(ModelSpec("tinycnn"))
    m = ToyMethod()
    model = m.prepare(model)
    hist = []
    train(m, model, data, CFG, on_epoch=hist.append, progress=False)
    steps = 2 * (512 // 128)
    assert m.calls == {"prepare": 1, "phase": 2, "penalty": steps, "backward": steps, "step": steps, "metrics": 2}
    assert m.gain.numel() == 2 and float(m.gain.detach().sum()) < 2.0  # the penalty pulled the gain down
    assert [h["phase"] for h in hist] == [0, 1] and "gain_sum" in hist[0]


def test_float_model_cache_reuses_training(tmp_path, monkeypatch):
    data = make_synthetic(n_train=256, n_test=64)
    spec = ModelSpec("tinycnn")
    m1, meta1 = float_model(spec, data, CFG, tmp_path, progress=False)
    monkeypatch.setattr("benchmarks.float_cache.train", lambda *a, **k: pytest.fail("retrained a cached float model"))
    m2, meta2 = float_model(spec, data, CFG, tmp_path, progress=False)
    assert len(list(tmp_path.glob("float-*.pt"))) == 1 and meta1["key"] == meta2["key"]
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    # the digest names the weights: equal for the cached copy, different once a single weight moves
    assert meta1["digest"] == meta2["digest"] == state_digest(m2) and len(meta1["digest"]) == 16
    for module in m2.modules():  # BatchNorm's batch counters do not change the function: not part of it
        if isinstance(module, torch.nn.BatchNorm2d):
            module.num_batches_tracked += 7
    assert state_digest(m2) == meta1["digest"]
    with torch.no_grad():
        next(m2.parameters()).view(-1)[0] += 1e-6
    assert state_digest(m2) != meta1["digest"]


def test_compressible_weights_of_tinycnn_and_of_the_papers_resnet9():
    def weights(model):
        modules = dict(model.named_modules())
        return [weight_of(modules[n.name]).numel() for n in topology(model).nodes]
    tiny = weights(build_model(ModelSpec("tinycnn")))
    assert tiny[0] == 8 * 3 * 3 * 3 and tiny[-1] == 16 * 16 * 10
    assert sum(weights(build_model(ModelSpec("resnet9")))) == 6_568_640  # the paper's network


def test_resume_keeps_a_checkpoint_whose_history_has_a_torn_line_after_its_epochs(tmp_path):
    """An interruption can tear the history line being written after the last checkpoint: the checkpoint's
    epochs are intact, so the run resumes from it instead of starting afresh."""
    from benchmarks.checkpoints import resume_history

    ckpt, hist = tmp_path / "checkpoint.pt", tmp_path / "history.jsonl"
    torch.save({"epoch_index": 2, "elapsed": 5.0}, ckpt)
    hist.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    records, elapsed = resume_history(hist, ckpt)
    assert records == [{"epoch": 1}, {"epoch": 2}] and elapsed == 5.0 and ckpt.is_file()
    assert hist.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    hist.write_text('{"epoch": 1}\n{"epo')  # but a tear inside the checkpoint's epochs cannot be continued
    assert resume_history(hist, ckpt) == ([], 0.0) and not ckpt.exists()


def test_precision_reaches_every_schedule_and_the_run_id():
    from benchmarks.harness.grid import expand
    from benchmarks.harness.presets import get_preset
    fp32, bf16 = (expand(get_preset("smoke"), ["self_compression"], [0], {}, precision=p) for p in ("fp32", "bf16"))
    assert all(s.train.precision == s.float_train.precision == "bf16" for s in bf16)
    assert all(s.train.precision == "fp32" for s in fp32)
    assert {s.run_id for s in fp32}.isdisjoint(s.run_id for s in bf16)
    assert all(s.as_dict()["train"]["precision"] == "bf16" for s in bf16)  # stored in config.json
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")


@pytest.mark.parametrize("flags, evidence, expected", [
    ([], False, "fp32"),                              # AVX2-only host, no evidence
    ([], True, "fp32"),                               # evidence, but bf16 would be emulated: never
    (["avx512_bf16"], False, "fp32"),                 # native, but no evidence yet
    (["avx512_bf16"], True, "bf16"),                  # AVX512-BF16 EPYC with the evidence
    (["amx_bf16"], True, "bf16"),                     # Xeon with AMX
    (["amx_bf16", "avx512_bf16", "avx2"], True, "bf16"),
    (["avx2", "avx512f"], True, "fp32"),              # AVX512 without its bf16 extension
])
def test_auto_precision_from_host_flags_and_evidence(flags, evidence, expected):
    from benchmarks.device import resolve_precision
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, evidence=evidence, cpu_flags=flags) == expected
    # an explicit choice is taken as given, whatever the host (emulated bf16 only warns)
    assert resolve_precision("fp32", cpu, evidence=evidence, cpu_flags=flags) == "fp32"
    assert resolve_precision("bf16", cpu, evidence=evidence, cpu_flags=flags) == "bf16"


def test_unknown_precision_is_refused():
    from benchmarks.device import resolve_precision
    with pytest.raises(ValueError, match="--precision"):
        resolve_precision("half", torch.device("cpu"))


def test_bf16_forward_agrees_with_fp32_and_a_bf16_step_trains():
    torch.manual_seed(0)
    model = build_model(ModelSpec("tinycnn")).eval()
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits: logits agree to a few percent of their spread
    assert (low.float() - ref).abs().max() < 0.03 * ref.abs().max() + 1e-3
    data = make_synthetic(n_train=256, n_test=64)
    hist = []
    train(Method(), build_model(ModelSpec("tinycnn")), data, TrainConfig(epochs=1, batch_size=128, lr=0.1,
                                                                          precision="bf16"),
          on_epoch=hist.append, progress=False)
    assert len(hist) == 1 and torch.isfinite(torch.tensor(hist[0]["train_loss"]))


def test_batchnorm_reestimation_averages_the_training_batches_and_leaves_weights_alone():
    data = make_synthetic(n_train=256, n_test=64)
    model = build_model(ModelSpec("tinycnn"))
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean.fill_(5.0)  # stale statistics
    bn.running_var.fill_(9.0)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    # the expected statistics by hand: the mean over batches of each batch's mean and unbiased variance
    # at the input of the BatchNorm, over the same augmented batches the function draws
    seen = []
    hook = bn.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    model.train()
    with torch.no_grad():
        for x, _ in list(batches(data.train, 64, torch.Generator().manual_seed(3), train=True))[:3]:
            model(x)
    hook.remove()
    want_mean = torch.stack([a.mean((0, 2, 3)) for a in seen]).mean(0)
    want_var = torch.stack([a.var((0, 2, 3), unbiased=True) for a in seen]).mean(0)
    model.eval()
    bn.running_mean.fill_(5.0)
    bn.running_var.fill_(9.0)
    reestimate_batchnorm(model, data.train, n_batches=3, batch_size=64, seed=3)
    assert not model.training and bn.momentum == 0.1
    assert torch.allclose(bn.running_mean, want_mean, atol=1e-5)
    assert torch.allclose(bn.running_var, want_var, atol=1e-4)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())


def test_auto_precision_flag_follows_the_committed_evidence():
    """``AUTO_PICKS_BF16`` is what the rule gives on the committed bf16 and fp32 runs (no evidence: False)."""
    from pathlib import Path

    from benchmarks import device
    from benchmarks.report.runs import load
    from tests.conftest import load_experiment

    root = Path(__file__).resolve().parents[1] / "results"
    if not (root / "cpu-bf16" / "runs").is_dir():
        assert device.AUTO_PICKS_BF16 is False
        return
    pt = load_experiment("precision_table")
    assert device.AUTO_PICKS_BF16 is pt.bf16_allowed(pt.precision_table(load(root / "cpu").table, load(root / "cpu-bf16").table))


def test_precision_rule_against_a_hand_example():
    import pandas as pd

    from tests.conftest import load_experiment
    pt = load_experiment("precision_table")

    def runs(precision, accs):
        return pd.DataFrame([{"method": m, "knob": None, "params": "{}", "model": "resnet9x0.25", "dataset": "c",
                              "data_fingerprint": "d", "bn_batches": 20, "seed": i, "accuracy": a,
                              "status": "ok", "precision": precision}
                             for m, seeds in accs.items() for i, a in enumerate(seeds)])

    fp32 = runs("fp32", {"float": [87.0, 87.4, 86.8], "self_compression": [83.0, 83.6, 83.3]})
    close = runs("bf16", {"float": [87.1, 86.9, 87.0], "self_compression": [83.2, 83.4, 83.0]})
    table = pt.precision_table(fp32, close)
    assert list(table.seeds) == [3, 3] and pt.bf16_allowed(table)
    # float: means 87.07 vs 86.0, larger std 0.31: outside
    far = runs("bf16", {"float": [86.0, 86.2, 85.8], "self_compression": [83.2, 83.4, 83.0]})
    assert not pt.bf16_allowed(pt.precision_table(fp32, far))
    # two seeds are not evidence
    two = runs("bf16", {"float": [87.1, 86.9], "self_compression": [83.2, 83.4]})
    assert not pt.bf16_allowed(pt.precision_table(fp32, two))
