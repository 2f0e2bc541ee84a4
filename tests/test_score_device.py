"""encoder.device: which device a task runs the encoder on, decided from the
setting, the GPUs Spark assigned to the task and the CUDA devices torch
sees. CI has no GPU: the choice is a pure function, tested here with the
GPU counts given; on this CPU-only machine "auto" must run on the CPU and
"cuda" must fail with a message naming the setting."""

from __future__ import annotations

import pytest

from udfs import model as M
from udfs.config import ConfigError, EncoderConfig, load_config
from udfs.predict import ScoreSettings, device_plan, score_texts


def plan(requested: str, gpus: list[str], cuda: int) -> M.DevicePlan:
    return M.plan_device(requested, "fp32", 64, "fp16", 256, gpus, cuda)


def test_cpu_is_cpu_whatever_the_machine():
    assert plan("cpu", ["1"], 4) == M.DevicePlan("cpu", "fp32", 64)


def test_auto_without_a_gpu_runs_on_cpu_at_cpu_settings():
    assert plan("auto", [], 0) == M.DevicePlan("cpu", "fp32", 64)


def test_auto_takes_the_gpu_spark_assigned_in_fp16_with_larger_batches():
    assert plan("auto", ["2"], 4) == M.DevicePlan("cuda:2", "fp16", 256)
    assert plan("cuda", ["1"], 4) == M.DevicePlan("cuda:1", "fp16", 256)


def test_without_gpu_scheduling_the_first_visible_gpu():
    # mrjob tasks, or Spark without spark.task.resource.gpu.amount
    assert plan("auto", [], 2) == M.DevicePlan("cuda:0", "fp16", 256)


def test_an_address_torch_does_not_see_falls_back_to_cuda0(caplog):
    # a container that exposes only its own GPU, as device 0
    assert plan("cuda", ["3"], 1).device == "cuda:0"
    assert "GPU address 3" in caplog.text


def test_cuda_requested_without_a_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="encoder.device = 'cuda'.*no CUDA device"):
        plan("cuda", [], 0)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="encoder.device must be one of"):
        plan("tpu", [], 0)
    with pytest.raises(ConfigError, match="encoder.device"):
        load_config(None, ["encoder.device=tpu"])
    with pytest.raises(ConfigError, match="encoder.gpu_batch_size"):
        load_config(None, ["encoder.gpu_batch_size=0"])


def test_settings_reach_the_plan():
    cfg = load_config(None, ["encoder.device=cpu", "encoder.gpu_batch_size=512"])
    settings = ScoreSettings.from_config(cfg.encoder, {}, ())
    assert (settings.device, settings.gpu_batch_size, settings.gpu_precision) == ("cpu", 512, "fp16")
    assert device_plan(settings, ["0"]).device == "cpu"


@pytest.mark.skipif(M.cuda_devices() > 0, reason="checks the CPU-only path; this machine has a GPU")
def test_on_this_cpu_only_machine_auto_scores_on_cpu_and_cuda_fails():
    from udfs import head as H

    vocab = ["negative", "positive"]
    arrays = H.train_head(
        M.embed(M.load_encoder(), ["good", "bad"], 2, 16), ["positive", "negative"], vocab, _tiny_train()
    )
    auto = ScoreSettings.from_config(EncoderConfig(), arrays, vocab)
    assert device_plan(auto).device == "cpu"
    assert score_texts(["a fine film"], auto)["predicted"].notna().all()
    cuda = ScoreSettings.from_config(EncoderConfig(device="cuda"), arrays, vocab)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        score_texts(["a fine film"], cuda)


def _tiny_train():
    from udfs.config import TrainConfig

    return TrainConfig(hidden=0, epochs=2)
