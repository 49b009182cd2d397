"""Every registered op: float64 numerical gradient check and PyTorch parity (tests/harness.py)."""
import pytest

from harness import check_against_torch, check_gradients
from op_cases import OP_CASES


@pytest.mark.parametrize("case", OP_CASES, ids=str)
def test_gradients_match_numerical(case):
    check_gradients(case)


@pytest.mark.parametrize("case", [c for c in OP_CASES if c.torch_forward is not None], ids=str)
def test_matches_pytorch(case):
    check_against_torch(case)
