"""The accuracy checks the kernel tests rely on (the GPU ones too) reject wrong results of any magnitude."""
import pytest
import torch

from tests.kernels.checks import assert_as_accurate_as, assert_close_relative


@pytest.mark.parametrize("magnitude", [1e-5, 1.0, 1e4])
def test_a_zero_or_ten_percent_off_result_fails_and_torchs_own_bf16_error_passes(magnitude):
    torch.manual_seed(0)
    exact = torch.randn(64, 64, dtype=torch.float64) * magnitude  # e.g. a gradient, in float64
    torchs = exact.bfloat16()  # torch's result in bf16: rounding error only
    assert_as_accurate_as([torchs.float()], [torchs], [exact], ["grad"])
    for wrong in (torch.zeros_like(exact), exact * 1.1):
        with pytest.raises(AssertionError):
            assert_as_accurate_as([wrong.bfloat16()], [torchs], [exact], ["grad"])
        with pytest.raises(AssertionError):
            assert_close_relative(wrong, exact, rel=1e-2)
    assert_close_relative(exact.half(), exact, rel=1e-2)
