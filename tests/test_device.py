"""Device and precision: the rule per device and CPU capability, with the probe injected."""

import pytest
import torch

from pneumo_fastai.device import autocast, cpu_probe, resolve_compute, resolve_device
from pneumo_fastai.errors import PneumoError

CPU = torch.device("cpu")


def probe_of(times: dict):
    calls = []

    def probe(training: bool) -> dict:
        calls.append(training)
        return times

    return probe, calls


FAST_BF16 = {("fp32", False): 1.0, ("fp32", True): 0.9, ("bf16", False): 0.6, ("bf16", True): 0.5}
SLOW_BF16 = {("fp32", False): 1.0, ("fp32", True): 1.2, ("bf16", False): 3.0, ("bf16", True): 2.0}
NO_BF16 = {("fp32", False): 1.0, ("fp32", True): 1.1}


def test_auto_picks_bf16_and_channels_last_where_the_cpu_measures_them_faster():
    probe, calls = probe_of(FAST_BF16)
    plan = resolve_compute(CPU, "auto", None, training=True, probe=probe)
    assert (plan.precision, plan.channels_last) == ("bf16", True) and calls == [True]
    assert "bf16 measured faster" in plan.reason


def test_auto_stays_fp32_where_bf16_is_missing_or_slower():
    for times in (NO_BF16, SLOW_BF16):
        probe, _ = probe_of(times)
        plan = resolve_compute(CPU, "auto", None, probe=probe)
        assert (plan.precision, plan.channels_last) == ("fp32", False)
    assert "without bf16" in resolve_compute(CPU, "auto", probe=probe_of(NO_BF16)[0]).reason


def test_forced_settings_are_kept_and_skip_the_probe():
    probe, calls = probe_of(FAST_BF16)
    plan = resolve_compute(CPU, "fp32", False, probe=probe)
    assert (plan.precision, plan.channels_last, calls) == ("fp32", False, [])
    plan = resolve_compute(CPU, "bf16", True, training=False, probe=probe)
    assert (plan.precision, plan.channels_last, calls) == ("bf16", True, [])


def test_channels_last_alone_follows_the_probe_at_the_forced_precision():
    assert resolve_compute(CPU, "fp32", None, probe=probe_of(FAST_BF16)[0]).channels_last
    assert not resolve_compute(CPU, "fp32", None, probe=probe_of(SLOW_BF16)[0]).channels_last


def test_fp16_on_cpu_is_refused_with_a_clear_message():
    with pytest.raises(PneumoError, match=r"fp16 needs a CUDA GPU.*bf16, fp32 or auto"):
        resolve_compute(CPU, "fp16", probe=probe_of(FAST_BF16)[0])
    with pytest.raises(PneumoError, match="must be one of"):
        resolve_compute(CPU, "int8")


def test_the_real_probe_measures_what_this_cpu_runs_natively():
    times = cpu_probe(False)
    assert {("fp32", False), ("fp32", True)} <= set(times)
    assert all(t > 0 for t in times.values())
    assert cpu_probe(False) is times, "measured once per process"


def test_autocast_is_a_no_op_for_fp32_and_casts_for_bf16():
    x, w = torch.randn(2, 4), torch.randn(4, 3)
    with autocast(CPU, "fp32"):
        assert (x @ w).dtype == torch.float32
    with autocast(CPU, "bf16"):
        assert (x @ w).dtype == torch.bfloat16


def test_resolve_device():
    assert resolve_device("cpu") == CPU
    with pytest.raises(PneumoError, match="Unknown device"):
        resolve_device("tpu-ish")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == CPU
        with pytest.raises(PneumoError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_the_probe_leaves_the_global_generator_alone():
    cpu_probe.cache_clear()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    cpu_probe(True)
    assert torch.equal(torch.rand(3), expected)
