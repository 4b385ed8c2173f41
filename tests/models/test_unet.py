"""The agents' U-Net: any input size in, the same size out; encoder features for the Q-network."""

import pytest
import torch

from rlmask.models import UNet, seeded_init


def rand(*shape: int, requires_grad: bool = False) -> torch.Tensor:
    """Seeded normal noise, so every run sees the same inputs."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0), requires_grad=requires_grad)


SMALL = (4, 8, 8, 8, 16, 16)  # six levels like the default, narrow to keep the tests fast


@pytest.mark.parametrize("size", [28, 30, 33, 64])
@pytest.mark.parametrize("out_chans", [1, 2])
def test_output_has_input_size(size, out_chans):
    net = UNet(in_chans=1, out_chans=out_chans, channels=SMALL)
    assert net(rand(2, 1, size, size)).shape == (2, out_chans, size, size)


def test_non_square_input_and_default_channels():
    net = UNet(in_chans=3, out_chans=1)
    assert net(rand(2, 3, 30, 45)).shape == (2, 1, 30, 45)


def test_encode_floors_odd_sizes_down_to_the_occlusion_grid():
    net = UNet(in_chans=1, out_chans=1)
    feats = net.encode(rand(1, 1, 300, 300))
    sizes, size = [], 300
    for _ in net.channels:
        sizes.append(size)
        size //= 2
    assert [f.shape[1] for f in feats] == list(net.channels)
    assert [f.shape[-1] for f in feats] == sizes  # 300, 150, 75, 37, 18, 9: the bottleneck is the 9x9 grid
    assert feats[-1].shape == (1, 128, 9, 9)


def test_encode_stops_pooling_at_one_pixel():
    feats = UNet(1, 1, channels=SMALL).encode(rand(2, 1, 28, 28))
    assert [f.shape[-1] for f in feats] == [28, 14, 7, 3, 1, 1]


def test_backward_reaches_every_parameter():
    net = UNet(in_chans=1, out_chans=1, channels=(4, 8, 8))
    x = rand(2, 1, 30, 30, requires_grad=True)
    out = net(x)
    out.square().mean().backward()
    for n, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    # In eval mode (no batch coupling through BN) an output pixel depends on its own image only.
    x.grad = None
    net.eval()(x)[0, 0, 10, 10].backward()
    assert x.grad[0, 0, 10, 10] != 0 and x.grad[1].abs().sum() == 0


def test_state_dict_round_trip(tmp_path):
    with seeded_init(torch.Generator().manual_seed(0)):
        a, b = UNet(1, 1, channels=SMALL), UNet(1, 1, channels=SMALL)
    x = rand(2, 1, 28, 28)
    assert not torch.equal(a.eval()(x), b.eval()(x))
    torch.save(a.state_dict(), tmp_path / "u.pt")
    b.load_state_dict(torch.load(tmp_path / "u.pt", weights_only=True))
    assert torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("size", [16, 28, 33])
def test_vgg11_unet_output_has_input_size_and_vgg11_widths(size):
    from rlmask.models import VGG11UNet

    net = VGG11UNet(in_chans=1, out_chans=1)
    assert net(rand(2, 1, size, size)).shape == (2, 1, size, size)
    convs = [m for m in net.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]  # VGG-11's eight convs


def test_context_encoder_is_a_backbone_with_the_classifier_interface():
    from rlmask.models import create_model

    model = create_model("context_encoder", num_classes=3, in_chans=1)
    x = torch.randn(2, 1, 28, 28)
    feats = model.forward_features(x)
    assert feats.shape == (2, 128, 1, 1) and model.num_features == 128  # 28 -> 14 -> 7 -> 3 -> 1 -> 1
    assert model(x).shape == (2, 3) and model.forward_head(feats, pre_logits=True).shape == (2, 128)
    assert [f.shape[1] for f in model.forward_stages(x)] == [16, 32, 64, 64, 128, 128]
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5 and model(x).shape == (2, 5)
