"""Mixed precision and layout defaults: what `auto` picks on each device."""

import pytest
import torch

from crckd.engine.precision import resolve_precision
from crckd.errors import ConfigError
from crckd.methods import load_config


def precision_for(device: str, *overrides: str):
    return resolve_precision(load_config(overrides=list(overrides)).train, torch.device(device))


def test_auto_on_the_cpu_is_float32_without_channels_last():
    precision = precision_for("cpu")
    assert (precision.dtype, precision.channels_last, precision.needs_scaler) == (
        None,
        False,
        False,
    )


@pytest.mark.parametrize(
    ("capability", "dtype"),
    [((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16), ((7, 5), torch.float16)],
)
def test_auto_on_cuda_picks_native_bf16_else_fp16_with_a_scaler(capability, dtype, monkeypatch):
    asked = []

    def capability_of(device):
        asked.append(device)
        return capability

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability_of)
    precision = precision_for("cuda:1")
    assert precision.dtype == dtype and precision.channels_last
    assert precision.needs_scaler == (dtype == torch.float16)
    assert asked == [torch.device("cuda:1")]  # the training device, not the current one


def test_explicit_settings_win_and_fp16_needs_cuda():
    assert precision_for("cpu", "train.amp=bf16").dtype == torch.bfloat16
    assert precision_for("cpu", "train.channels_last=true").channels_last
    assert precision_for("cuda", "train.amp=off", "train.channels_last=false").dtype is None
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        precision_for("cpu", "train.amp=fp16")
