import pandas as pd
import pytest

from benchmarks.timing import step_speed, steps


def test_step_speed_writes_one_row_per_method_against_float(tmp_path):
    # the built-ins named: other tests register deliberately broken methods in this process
    code = step_speed.main([str(tmp_path), "--preset", "smoke", "--precision", "fp32", "--repeats", "2",
                            "--steps", "1", "--warmup", "0", "--device", "cpu",  # no warm-up: allowed
                            "--methods", "self_compression,diffq,weight_fixing,float_control"])
    assert code == 0
    df = pd.read_csv(tmp_path / "step_speed.csv")
    assert set(df.method) >= {"float", "self_compression", "diffq", "weight_fixing"}
    assert (df.step_ms > 0).all() and (df.precision == "fp32").all()
    assert df.set_index("method").loc["float"].step_vs_float == 1.0 and (df.step_vs_float > 0).all()
    assert (df.float_step_ms == df.set_index("method").loc["float"].step_ms).all()  # one yardstick for all


def test_step_speed_refuses_bad_input(tmp_path, capsys):
    assert step_speed.main([str(tmp_path), "--repeats", "0"]) == 2
    assert step_speed.main([str(tmp_path), "--methods", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


@pytest.mark.slow
def test_every_epoch_records_its_step_time_against_a_float_step(tmp_path):
    import json
    import random

    import torch

    from benchmarks.data import make_synthetic
    from benchmarks.harness.grid import bind_data, expand
    from benchmarks.harness.presets import get_preset
    from benchmarks.harness.runner import execute
    from benchmarks.models import ModelSpec
    from benchmarks.train import TrainConfig

    data = make_synthetic(n_train=512, n_test=128)
    spec = bind_data(expand(get_preset("smoke"), ["self_compression"], [0], {}), data)[0]
    assert execute(spec, tmp_path, data=data, progress=False)["status"] == "ok"
    hist = [json.loads(line) for line in (tmp_path / "runs" / spec.run_id / "history.jsonl").read_text().splitlines()]
    assert len(hist) == spec.train.epochs and all(h["epoch_time_vs_float"] > 0 for h in hist)
    # the yardstick leaves every random stream as it found it
    torch.manual_seed(1), random.seed(1)
    a = torch.rand(3), random.random()
    torch.manual_seed(1), random.seed(1)
    steps.float_step_seconds(ModelSpec("tinycnn"), TrainConfig(batch_size=32), torch.device("cpu"), steps=1)
    b = torch.rand(3), random.random()
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
