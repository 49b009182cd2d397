"""Module behaviour: state_dict, strict loading, freeze vs train/eval, rng, need_input_grad."""
import numpy as np
import pytest

from cnnlab import functional as F
from cnnlab import nn
from cnnlab.errors import CnnlabError, ShapeError
from cnnlab.models import build_model


def small(seed=0):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=rng), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.5, rng=rng), nn.Linear(4 * 4 * 4, 3, rng=rng))


def test_state_dict_names_and_round_trip():
    a, b = small(0), small(1)
    assert list(a.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                    "1.running_var", "6.weight", "6.bias"]
    b.load_state_dict(a.state_dict())
    for k, v in a.state_dict().items():
        assert np.array_equal(v, b.state_dict()[k])


def test_strict_load_lists_every_problem_and_lenient_reports():
    m = small()
    sd = dict(m.state_dict())
    sd.pop("0.bias")
    sd["extra.weight"] = np.zeros(1)
    sd["6.weight"] = np.zeros((2, 2))
    with pytest.raises(CnnlabError) as e:
        m.load_state_dict(sd)
    msg = str(e.value)
    assert "0.bias" in msg and "extra.weight" in msg and "6.weight" in msg
    report = m.load_state_dict(sd, strict=False)
    assert report["missing"] == ["0.bias"] and report["unexpected"] == ["extra.weight"]
    assert len(report["mismatched"]) == 1


def test_freeze_is_separate_from_eval():
    m = small()
    m.freeze(until="1")
    frozen = {n: p.frozen for n, p in m.named_parameters()}
    assert frozen == {"0.weight": True, "0.bias": True, "1.weight": True, "1.bias": True,
                      "6.weight": False, "6.bias": False}
    assert m.training  # freezing does not change the mode
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    before = m.state_dict()["1.running_mean"].copy()
    m.forward(x)  # a frozen BN layer in train mode still uses and updates batch statistics
    assert not np.array_equal(before, m.state_dict()["1.running_mean"])
    m.backward(np.ones((2, 3), np.float32))
    assert m[0].weight.grad is None and m[6].weight.grad is not None
    with pytest.raises(CnnlabError, match="no layer named"):
        m.freeze(until="nope")


def test_eval_disables_dropout_and_uses_running_stats():
    m = small()
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    m.eval()
    assert np.array_equal(m.forward(x), m.forward(x))
    m.train()
    assert not np.array_equal(m.forward(x), m.forward(x))


def test_set_rng_makes_dropout_reproducible():
    x = np.ones((2, 10), np.float32)
    d = nn.Dropout(0.5)
    d.set_rng(np.random.default_rng(3))
    a = d.forward(x)
    d.set_rng(np.random.default_rng(3))
    assert np.array_equal(a, d.forward(x))


def test_first_layer_skips_input_gradient():
    m = build_model("lenet")
    m.need_input_grad = False
    x = np.zeros((2, 1, 28, 28), np.float32)
    assert m.backward(np.ones_like(m.forward(x))) is None
    assert m[0].weight.grad is not None


def test_shape_errors_say_what_to_do():
    m = build_model("lenet")
    with pytest.raises(ShapeError, match="expects input with 1 channels"):
        m.forward(np.zeros((2, 3, 28, 28), np.float32))
    with pytest.raises(ShapeError, match="does not fit"):
        nn.Conv2d(1, 1, 5).forward(np.zeros((1, 1, 3, 3), np.float32))


def test_float32_stays_float32():
    m = build_model("small_vgg")
    out = m.forward(np.zeros((2, 1, 28, 28), np.float32))
    assert out.dtype == np.float32
    m.backward(np.ones_like(out))
    assert all(p.grad.dtype == np.float32 for p in m.parameters())


def test_a_frozen_weight_leaves_its_bias_training_and_the_other_way_round():
    """As torch with requires_grad per tensor: each parameter's gradient follows its own
    frozen flag (bias-only fine-tuning trains the bias)."""
    rng = np.random.default_rng(0)
    x4, x2 = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3))
    for layer, x, sums in ((nn.Conv2d(3, 2, 3, dtype=np.float64), x4, (0, 2, 3)),
                           (nn.Linear(3, 2, dtype=np.float64), x2, (0,)),
                           (nn.BatchNorm2d(3, dtype=np.float64), x4, (0, 2, 3)),
                           (nn.BatchNorm1d(3, dtype=np.float64), x2, (0,))):
        for frozen in ("weight", "bias"):
            layer.zero_grad()
            for name in ("weight", "bias"):
                getattr(layer, name).frozen = name == frozen
            out = layer.forward(x)
            layer.backward(np.ones_like(out))
            trained = layer.bias if frozen == "weight" else layer.weight
            assert getattr(layer, frozen).grad is None and trained.grad is not None, layer
            if frozen == "weight":
                assert np.allclose(trained.grad, np.ones_like(out).sum(axis=sums)), layer


@pytest.mark.parametrize("make, words", [
    (lambda: nn.MaxPool2d(2, stride=0), "stride >= 1"),
    (lambda: nn.AvgPool2d(0), "kernel_size and stride >= 1"),
    (lambda: nn.Dropout(1.5), "drop probability"),
    (lambda: nn.DropConnectLinear(3, 2, p=-0.1), "drop probability"),
    (lambda: nn.Linear(0, 3), ">= 1"),
    (lambda: nn.BatchNorm2d(0), "num_features >= 1"),
    (lambda: nn.BatchNorm2d(3, eps=-1), "eps > 0"),
    (lambda: nn.BatchNorm1d(3, momentum=2), "momentum in"),
])
def test_modules_refuse_bad_settings_when_built(make, words):
    with pytest.raises(CnnlabError, match=words):
        make()


def test_functional_ops_check_their_vectors_and_windows():
    x = np.zeros((2, 3, 4, 4))
    with pytest.raises(ShapeError, match="beta of shape"):
        F.batchnorm_forward(x, np.ones(3), np.zeros(4), np.zeros(3), np.ones(3), training=False)
    with pytest.raises(ShapeError, match="running_var"):
        F.batchnorm_forward(x, np.ones(3), np.zeros(3), np.zeros(3), np.ones(5), training=False)
    with pytest.raises(ShapeError, match="bias must have shape"):
        F.conv2d_forward(x, np.ones((2, 3, 3, 3)), np.zeros(1))
    with pytest.raises(ShapeError, match="bias must have shape"):
        F.linear_forward(np.ones((2, 3)), np.ones((4, 3)), np.zeros((2, 2)))
    for args in ((0,), (2, 0)):
        with pytest.raises(ShapeError, match=">= 1"):
            F.max_pool_forward(x, *args)
    with pytest.raises(CnnlabError, match="forward"):
        nn.Linear(3, 2).backward(np.ones((1, 2)))


def test_layers_compute_in_their_weight_dtype():
    """float32 layers fed float64 (or uint8) input answer in float32, gradients included."""
    rng = np.random.default_rng(1)
    for layer, shape in ((nn.Conv2d(2, 3, 3, padding=1), (2, 2, 5, 5)), (nn.Linear(4, 3), (2, 4)),
                         (nn.BatchNorm2d(2), (2, 2, 3, 3)), (nn.BatchNorm1d(4), (3, 4))):
        for x in (rng.standard_normal(shape), rng.integers(0, 255, shape).astype(np.uint8)):
            layer.zero_grad()
            out = layer.forward(x)
            dx = layer.backward(np.ones(out.shape))
            assert out.dtype == dx.dtype == layer.weight.grad.dtype == np.float32, layer
