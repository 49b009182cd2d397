"""Architecture analysis: the slides' arithmetic, published model sizes, receptive fields, and
the symbolic shapes agreeing with real forward passes."""
import numpy as np
import pytest

from cnnlab import nn
from cnnlab.errors import CnnlabError, ShapeError
from cnnlab.models import get_model, model_names, default_input, summarize
from cnnlab.models.inception import InceptionBlock, factorized_conv
from cnnlab.models.resnet import BasicBlock, Bottleneck, resnet18
from cnnlab.models.summary import format_summary, parse_shape, receptive_field

C, H, W = 16, 10, 12


def conv(cin, cout, k, **kw):
    pad = (k[0] // 2, k[1] // 2) if isinstance(k, tuple) else k // 2
    return nn.Conv2d(cin, cout, k, padding=pad, bias=False, rng=np.random.default_rng(0), **kw)


def test_one_7x7_conv_vs_three_3x3():
    one = summarize(conv(C, C, 7), (C, H, W))
    assert one.total_params == 49 * C * C
    assert one.total_macs == 49 * H * W * C * C
    assert one.receptive_field == (7, 7)
    three = summarize(nn.Sequential(conv(C, C, 3), nn.ReLU(), conv(C, C, 3), nn.ReLU(),
                                    conv(C, C, 3), nn.ReLU()), (C, H, W))
    assert three.total_params == 27 * C * C
    assert three.total_macs == 27 * H * W * C * C
    assert three.receptive_field == (7, 7)
    assert three.output_shape == one.output_shape == (C, H, W)


def test_stacked_3x3_receptive_fields():
    seq = nn.Sequential(conv(C, C, 3), conv(C, C, 3), conv(C, C, 3))
    s = summarize(seq, (C, H, W))
    assert [r.receptive_field for r in s.rows] == [(3, 3), (5, 5), (7, 7)]
    assert receptive_field(nn.Sequential(conv(C, C, 3), conv(C, C, 3)), (C, H, W)) == (5, 5)


def test_bias_adds_one_parameter_per_output_channel():
    s = summarize(nn.Conv2d(C, C, 3, padding=1, rng=np.random.default_rng(0)), (C, H, W))
    assert s.total_params == 9 * C * C + C
    assert s.total_macs == 9 * H * W * C * C


def test_bottleneck_1x1_3x3_1x1():
    # the slides: 1x1 C -> C/2, 3x3 C/2 -> C/2, 1x1 C/2 -> C: 3.25 C^2 instead of 9 C^2
    b = nn.Sequential(conv(C, C // 2, 1), nn.ReLU(), conv(C // 2, C // 2, 3), nn.ReLU(),
                      conv(C // 2, C, 1), nn.ReLU())
    s = summarize(b, (C, H, W))
    assert s.total_params == C * C // 2 + 9 * C * C // 4 + C * C // 2 == int(3.25 * C * C)
    assert s.total_macs == int(3.25 * H * W * C * C)
    assert s.receptive_field == (3, 3)
    single = summarize(conv(C, C, 3), (C, H, W))
    assert single.total_params == 9 * C * C


def test_1xn_then_nx1_factorization():
    for n in (3, 5, 7):
        f = factorized_conv(C, C, n, bias=False)
        s = summarize(f, (C, H, W))
        assert s.total_params == 2 * n * C * C
        assert s.total_macs == 2 * n * H * W * C * C
        assert s.receptive_field == (n, n)
        assert s.output_shape == (C, H, W)
        full = summarize(conv(C, C, n), (C, H, W))
        assert full.total_params == n * n * C * C


def test_vgg16_matches_published_counts():
    s = summarize(get_model("vgg16"), "3x224x224")
    assert s.total_params == 138_357_544
    assert s.total_macs == 15_470_264_320          # "15.5 G multiply-adds"
    assert s.output_shape == (1000,)
    assert s.row("features.30").output_shape == (512, 7, 7)
    assert s.row("features.30").receptive_field == (212, 212)   # pool5
    conv_macs = sum(r.macs for r in s.rows if r.kind == "Conv2d")
    assert conv_macs == 15_346_630_656
    # activations, float32, batch 1: the largest map is 64x224x224
    assert s.row("features.0").activation_bytes == 64 * 224 * 224 * 4


@pytest.mark.parametrize("name, params, macs", [
    ("resnet18", 11_689_512, 1_814_073_344),
    ("resnet34", 21_797_672, 3_663_761_408),
    ("resnet50", 25_557_032, 4_089_184_256),
    ("vgg11", 132_863_336, 7_609_090_048),
    ("vgg16_bn", 138_365_992, 15_470_264_320),
])
def test_published_model_sizes(name, params, macs):
    s = summarize(get_model(name), (3, 224, 224))
    assert (s.total_params, s.total_macs) == (params, macs)


def test_nested_residual_and_concat():
    block = nn.Residual(nn.Sequential(conv(C, C, 3), nn.ReLU(),
                                      nn.Concat(conv(C, C // 2, 3), conv(C, C // 2, (1, 5)))))
    s = summarize(nn.Sequential(block, nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(C, 3)), (C, H, W))
    assert s.total_params == 9 * C * C + 9 * C * C // 2 + 5 * C * C // 2 + 3 * C + 3
    kinds = [r.kind for r in s.rows]
    assert "add" in kinds and "concat" in kinds
    concat = next(r for r in s.rows if r.kind == "concat")
    assert concat.output_shape == (C, H, W)
    assert concat.receptive_field == (5, 7)   # 3x3 then the wider of 3x3 and 1x5
    assert s.output_shape == (3,)


def test_resnet_blocks_count_and_downsample():
    b = BasicBlock(C, 2 * C, stride=2)
    s = summarize(b, (C, H, W))
    assert s.output_shape == (2 * C, H // 2, W // 2)
    assert s.total_params == 9 * C * 2 * C + 9 * 4 * C * C + C * 2 * C + 3 * (2 * 2 * C)
    bn = Bottleneck(4 * C, C)
    s = summarize(bn, (4 * C, H, W))
    assert s.total_params == 4 * C * C + 9 * C * C + 4 * C * C + 2 * (C + C + 4 * C)


def test_symbolic_shapes_equal_forward_shapes():
    rng = np.random.default_rng(0)
    for name in ["lenet", "seed_net", "small_vgg", "nin", "inception_net", "resnet18_small",
                 "small_filters_7x7", "small_filters_3x3"]:
        m = get_model(name).eval()
        s = summarize(m, default_input(name))
        out = m.forward(rng.standard_normal((2, *default_input(name))).astype(np.float32))
        assert out.shape[1:] == s.output_shape, name
    b = InceptionBlock(24, 8, n=5, out_1x1=4, out_nxn=6, out_dbl=5, out_pool=3).eval()
    s = summarize(b, (24, 9, 9))
    assert s.output_shape == (18, 9, 9) == b.forward(np.zeros((1, 24, 9, 9), np.float32)).shape[1:]


def test_every_registered_model_summarizes():
    for name in model_names():
        if name.startswith(("vgg", "resnet34", "resnet50")):
            continue                         # large: covered above
        s = summarize(get_model(name), default_input(name))
        assert s.total_params == sum(p.data.size for p in get_model(name).parameters())
        assert "parameters:" in format_summary(s)


def test_unknown_layers_are_probed_by_a_forward_pass():
    class Double(nn.Module):
        def forward(self, x):
            return np.concatenate([x, x], axis=1)

    s = summarize(nn.Sequential(conv(3, 4, 3), Double(), conv(8, 2, 1)), (3, 5, 5))
    assert s.output_shape == (2, 5, 5)


def test_frozen_parameters_are_not_trainable():
    m = get_model("lenet")
    m.freeze(until="3")
    s = summarize(m, (1, 28, 28))
    assert s.trainable_params == s.total_params - (16 * 25 + 16) - (32 * 16 * 25 + 32)


def test_errors_name_the_layer():
    m = nn.Sequential(conv(3, 4, 3), nn.Flatten(), nn.Linear(99, 2))
    with pytest.raises(ShapeError, match="Linear expects .*after 1"):
        summarize(m, (3, 8, 8))
    with pytest.raises(CnnlabError, match="like 3x224x224"):
        parse_shape("3 by 4")
    assert parse_shape("3x224x224") == (3, 224, 224)


def test_table_lists_every_layer_and_totals():
    text = format_summary(summarize(resnet18(num_classes=10), (3, 64, 64)))
    assert "layer4.1.conv2" in text and "layer2.0.downsample.0" in text
    assert "parameters:        11,181,642" in text
    assert "receptive field" in text
