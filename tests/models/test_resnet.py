"""The registered ResNets: shapes, gradients, checkpoints, and timm's state-dict layout."""

import pytest
import torch
from torch import nn

from rlmask.errors import UserError
from rlmask.models import create_model, list_models, register_model
from rlmask.models.resnet import Conv2d
from rlmask.models.weights import load_init_weights


def rand(*shape: int, requires_grad: bool = False) -> torch.Tensor:
    """Seeded normal noise, so every run sees the same inputs."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0), requires_grad=requires_grad)


MODELS = [m for m in list_models() if m != "context_encoder"]  # the ResNets; context_encoder is no timm variant

# timm's architecture of each variant, written out independently of rlmask/models/resnet.py:
# (block kind, blocks per stage, tiered 24-32-64 stem with avg-pool shortcuts).
TIMM_ARCH = {
    "resnet10t": ("basic", (1, 1, 1, 1), True),
    "resnet18": ("basic", (2, 2, 2, 2), False),
    "resnet26": ("bottleneck", (2, 2, 2, 2), False),
    "resnet34": ("basic", (3, 4, 6, 3), False),
    "resnet50": ("bottleneck", (3, 4, 6, 3), False),
}


def _bn(prefix: str, c: int) -> dict:
    return {f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()
    }


def timm_keys(name: str, num_classes: int, in_chans: int, small_stem: bool = False) -> dict[str, tuple]:
    """timm's state-dict keys and shapes for a variant (a 3x3 first conv with ``small_stem``)."""
    kind, layers, tiered = TIMM_ARCH[name]
    if tiered:
        keys = {"conv1.0.weight": (24, in_chans, 3, 3), "conv1.3.weight": (32, 24, 3, 3)}
        keys |= {"conv1.6.weight": (64, 32, 3, 3)} | _bn("conv1.1", 24) | _bn("conv1.4", 32)
    else:
        k = 3 if small_stem else 7
        keys = {"conv1.weight": (64, in_chans, k, k)}
    keys |= _bn("bn1", 64)
    expansion, inp = (1 if kind == "basic" else 4), 64
    for s, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512))):
        out = planes * expansion
        for b in range(n):
            p = f"layer{s + 1}.{b}"
            if kind == "basic":  # (out, in, kernel) of conv1, conv2[, conv3]
                convs = [(planes, inp, 3), (out, planes, 3)]
            else:
                convs = [(planes, inp, 1), (planes, planes, 3), (out, planes, 1)]
            for i, (co, ci, ks) in enumerate(convs, 1):
                keys[f"{p}.conv{i}.weight"] = (co, ci, ks, ks)
                keys |= _bn(f"{p}.bn{i}", co)
            if b == 0 and (s > 0 or inp != out):
                d = 1 if tiered else 0  # the avg-down shortcut has a parameter-free pool at index 0
                keys[f"{p}.downsample.{d}.weight"] = (out, inp, 1, 1)
                keys |= _bn(f"{p}.downsample.{d + 1}", out)
            inp = out
    return keys | {"fc.weight": (num_classes, inp), "fc.bias": (num_classes,)}


def test_registry_lists_the_timm_variants():
    assert MODELS == sorted(TIMM_ARCH)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("small_stem", [False, True])
def test_state_dict_matches_timm_and_loads_strictly(name, small_stem):
    model = create_model(name, num_classes=7, in_chans=1, small_stem=small_stem)
    expected = timm_keys(name, 7, 1, small_stem)
    sd = model.state_dict()
    assert set(sd) == set(expected)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    g = torch.Generator().manual_seed(0)
    # A stand-in for a timm checkpoint: random tensors of timm's names and shapes (BN counters are ints).
    fake = {
        k: torch.tensor(3) if k.endswith("num_batches_tracked") else torch.rand(s, generator=g) + 0.5
        for k, s in expected.items()
    }
    model.load_state_dict(fake, strict=True)
    assert torch.equal(model.state_dict()["fc.weight"], fake["fc.weight"])


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("small_stem", [False, True])
def test_output_shapes(name, in_chans, small_stem):
    model = create_model(name, num_classes=5, in_chans=in_chans, small_stem=small_stem)
    size = 32 if small_stem else 64
    x = rand(2, in_chans, size, size)
    feats = model.forward_features(x)
    stride = 8 if small_stem else 32
    assert feats.shape == (2, model.num_features, size // stride, size // stride)
    assert model(x).shape == (2, 5)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_parameter(name):
    model = create_model(name, num_classes=5, in_chans=1)
    # The zero-initialised last BN of each block stops gradients into its branch; use gamma = 1 here
    # so that a parameter left out of the graph would show up as a zero or missing gradient.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
    x, y = rand(2, 1, 64, 64), torch.tensor([0, 3])
    nn.functional.cross_entropy(model(x), y).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", MODELS)
def test_last_bn_of_each_block_starts_at_zero_like_timm(name):
    model = create_model(name, num_classes=5)
    last = "bn2" if TIMM_ARCH[name][0] == "basic" else "bn3"
    gammas = {k: v for k, v in model.state_dict().items() if k.startswith("layer") and k.endswith(f"{last}.weight")}
    assert len(gammas) == sum(TIMM_ARCH[name][1])
    assert all((v == 0).all() for v in gammas.values())
    assert (model.bn1.weight == 1).all()


@pytest.mark.parametrize("name", MODELS)
def test_save_load_round_trip(name, tmp_path):
    model = create_model(name, num_classes=5, generator=torch.Generator().manual_seed(1))
    model.train()
    model(rand(4, 3, 64, 64))  # move BN running statistics away from their defaults
    torch.save(model.state_dict(), tmp_path / "w.pt")
    fresh = create_model(name, num_classes=5, generator=torch.Generator().manual_seed(2))
    x = rand(2, 3, 64, 64)
    assert not torch.equal(model.eval()(x), fresh.eval()(x))
    fresh.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True), strict=True)
    assert torch.equal(model.eval()(x), fresh.eval()(x))


@pytest.mark.parametrize("name", MODELS)
def test_num_classes_zero_returns_pooled_features(name):
    model = create_model(name, num_classes=0).eval()
    x = rand(2, 3, 64, 64)
    out = model(x)
    assert isinstance(model.get_classifier(), nn.Identity)
    assert out.shape == (2, model.num_features)
    assert torch.allclose(out, model.forward_features(x).mean(dim=(2, 3)), atol=1e-6)
    assert "fc.weight" not in model.state_dict()


def test_reset_classifier_and_feature_width():
    model = create_model("resnet18", num_classes=0)
    assert model.num_features == 512 and create_model("resnet50", num_classes=0).num_features == 2048
    model.reset_classifier(3)
    assert isinstance(model.get_classifier(), nn.Linear) and model.get_classifier().out_features == 3
    assert model(rand(2, 3, 64, 64)).shape == (2, 3)


def test_generator_makes_initial_weights_reproducible_without_touching_global_rng():
    state = torch.get_rng_state()
    a = create_model("resnet10t", 4, generator=torch.Generator().manual_seed(5))
    b = create_model("resnet10t", 4, generator=torch.Generator().manual_seed(5))
    c = create_model("resnet10t", 4, generator=torch.Generator().manual_seed(6))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.fc.weight, c.fc.weight)


def test_init_weights_strip_compile_and_ddp_prefixes(tmp_path):
    src = create_model("resnet10t", 3, in_chans=1, small_stem=True, generator=torch.Generator().manual_seed(0)).eval()
    dst = create_model("resnet10t", 3, in_chans=1, small_stem=True, generator=torch.Generator().manual_seed(1)).eval()
    x = rand(2, 1, 32, 32)
    assert not torch.equal(src(x), dst(x))
    torch.save({f"_orig_mod.{k}": v for k, v in src.state_dict().items()}, tmp_path / "a.pt")
    load_init_weights(dst, tmp_path / "a.pt")
    assert torch.equal(src(x), dst(x))
    other = create_model("resnet10t", 3, in_chans=1, small_stem=True)
    torch.save({f"module._orig_mod.{k}": v for k, v in src.state_dict().items()}, tmp_path / "b.pt")
    load_init_weights(other, tmp_path / "b.pt")
    assert torch.equal(src(x), other.eval()(x))


def test_init_weights_name_what_does_not_fit(tmp_path):
    torch.save(create_model("resnet18", 10).state_dict(), tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match=r"ckpt\.pt: does not fit the model: missing layer1\.2\.conv1\.weight"):
        load_init_weights(create_model("resnet34", 10), tmp_path / "ckpt.pt")
    torch.save(create_model("resnet34", 10).state_dict(), tmp_path / "big.pt")
    with pytest.raises(UserError, match=r"big\.pt: does not fit the model: unexpected layer1\.2\.conv1\.weight"):
        load_init_weights(create_model("resnet18", 10), tmp_path / "big.pt")


def test_unknown_model_is_a_user_error():
    with pytest.raises(
        UserError, match=r"^--model resnet99: unknown model; choose from context_encoder, resnet10t, resnet18"
    ):
        create_model("resnet99", num_classes=2)


def test_timm_passthrough_without_timm_is_a_user_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(UserError, match=r"^--model timm:resnet18: timm is not installed or does not import"):
        create_model("timm:resnet18", num_classes=2)


def test_timm_passthrough_forwards_the_options(monkeypatch):
    import sys
    import types

    calls = []

    def fake_create_model(name, **kwargs):
        if name != "vit_tiny":
            raise RuntimeError(f"Unknown model ({name})")
        calls.append(kwargs)
        return nn.Linear(1, 1)

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=fake_create_model))
    assert isinstance(create_model("timm:vit_tiny", num_classes=4, in_chans=1), nn.Linear)
    assert calls == [{"pretrained": False, "num_classes": 4, "in_chans": 1}]
    with pytest.raises(UserError, match=r"^--model timm:nope: Unknown model \(nope\)"):
        create_model("timm:nope", num_classes=4)
    with pytest.raises(UserError, match=r"^--model timm:vit_tiny: small_stem works only with the built-in models"):
        create_model("timm:vit_tiny", num_classes=4, small_stem=True)


def test_register_model_rejects_a_duplicate_name():
    def resnet18(num_classes, in_chans=3, small_stem=False):
        return nn.Linear(1, 1)

    with pytest.raises(ValueError, match="already registered"):
        register_model(resnet18)


# (in, out, kernel, stride, padding, input h, input w, bias): every case has a 1x1 output
ONE_OUTPUT_CONVS = [
    (8, 6, 3, 1, 1, 1, 1, False),  # the last 3x3 conv of a ResNet fed 32 px
    (8, 6, 3, 2, 1, 2, 2, True),  # a strided 3x3 conv from 2x2: four taps see the input
    (8, 6, 3, 2, 1, 1, 2, False),  # not square
    (8, 6, 1, 2, 0, 2, 2, False),  # a strided 1x1 projection: one input pixel is read
    (8, 6, 1, 1, 0, 1, 1, True),
    (3, 5, 7, 2, 3, 2, 2, False),  # a 7x7 stem on a 2x2 image
]


@pytest.mark.parametrize("cin,cout,k,stride,pad,h,w,bias", ONE_OUTPUT_CONVS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_one_output_conv_is_the_library_convolution_without_calling_it(
    cin, cout, k, stride, pad, h, w, bias, channels_last, monkeypatch
):
    conv = Conv2d(cin, cout, k, stride=stride, padding=pad, bias=bias).double()
    x = rand(4, cin, h, w).double()
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    x.requires_grad_(True)
    out = torch.nn.functional.conv2d(x, conv.weight, conv.bias, stride, pad)
    expected = torch.autograd.grad(out.square().sum(), [x, *conv.parameters()])

    def library_conv(*args):
        raise AssertionError("the 1x1-output path called the library convolution")

    monkeypatch.setattr(nn.Conv2d, "_conv_forward", library_conv)
    got_out = conv(x)
    got = torch.autograd.grad(got_out.square().sum(), [x, *conv.parameters()])
    assert got_out.shape == out.shape == (4, cout, 1, 1)
    torch.testing.assert_close(got_out, out, rtol=1e-12, atol=1e-12)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_conv_with_more_than_one_output_uses_the_library_convolution(monkeypatch):
    conv = Conv2d(4, 6, 3, stride=2, padding=1)
    calls = []
    library_forward = nn.Conv2d._conv_forward
    monkeypatch.setattr(nn.Conv2d, "_conv_forward", lambda *a: calls.append(1) or library_forward(*a))
    assert conv(rand(2, 4, 3, 3)).shape == (2, 6, 2, 2)
    assert calls == [1]


def test_resnet10t_at_32px_matches_the_library_convolutions_in_bf16():
    """The policy network at --policy-input-size 32 reaches 1x1 maps; autocast output must not change."""
    model = create_model("resnet10t", num_classes=0, in_chans=3).eval()
    x = rand(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = model(x)
        for m in model.modules():
            if isinstance(m, Conv2d):
                m.forward = nn.Conv2d.forward.__get__(m)
        library = model(x)
    torch.testing.assert_close(fast.float(), library.float(), rtol=2e-2, atol=2e-2)
