"""TransHash model: bit allocation, branch shapes, local pretrained weights."""

import pytest
import torch

from hashtune.train.bits import bit_allocation, max_k_groups
from hashtune.train.model import TransHash, create_backbone

TINY = dict(img_size=8, patch_size=2, depth=3, embed_dim=32, num_heads=2, in_chans=1)


def _model(bits=32, k_groups=2, dual_stream=True):
    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny_patch16_224", **TINY)
    return TransHash(backbone=backbone, bits=bits, k_groups=k_groups, num_classes=10, dual_stream=dual_stream)


@pytest.mark.parametrize(
    ("bits", "k_groups", "expected"),
    [
        (48, 5, [24, 5, 5, 5, 5, 4]),
        (64, 4, [32, 8, 8, 8, 8]),
        (32, 3, [16, 6, 5, 5]),
        (16, 2, [8, 4, 4]),
        (33, 1, [16, 17]),
    ],
)
def test_bit_allocation(bits, k_groups, expected):
    assert bit_allocation(bits, k_groups) == expected
    assert sum(expected) == bits


def test_bit_allocation_without_dual_stream_puts_all_bits_on_the_global_head():
    assert bit_allocation(16, 6, dual_stream=False) == [16]


def test_max_k_groups_is_the_largest_k_that_allocates():
    for bits in (8, 16, 23, 32, 48, 64):
        k = max_k_groups(bits)
        assert len(bit_allocation(bits, k)) == k + 1 and min(bit_allocation(bits, k)[1:]) >= 4
        with pytest.raises(ValueError, match="leaves local heads"):
            bit_allocation(bits, k + 1)
    assert (max_k_groups(16), max_k_groups(48)) == (2, 6)


def test_bit_allocation_names_the_smallest_valid_split():
    with pytest.raises(
        ValueError, match=r"bits=16 with k_groups=3 leaves local heads of 2 bits.*k_groups <= 2 or bits >= 23"
    ):
        bit_allocation(16, 3)
    with pytest.raises(ValueError, match="k_groups=0"):
        bit_allocation(16, 0)
    with pytest.raises(ValueError, match="bits=-4"):
        bit_allocation(-4, 2)


@pytest.mark.parametrize("k_groups", range(1, 7))
@pytest.mark.parametrize("dual_stream", [True, False])
def test_output_shapes(k_groups, dual_stream):
    model = _model(bits=64, k_groups=k_groups, dual_stream=dual_stream)
    out = model(torch.randn(3, 1, 8, 8))
    assert out.codes.shape == (3, 64) and out.logits.shape == (3, 10)
    assert [codes.shape[1] for codes in out.head_codes] == bit_allocation(64, k_groups, dual_stream)
    assert torch.equal(torch.cat(out.head_codes, dim=1), out.codes)
    assert out.codes.abs().max() < 1


def test_every_parameter_gets_a_gradient():
    model = _model(bits=32, k_groups=3)
    out = model(torch.randn(4, 1, 8, 8))
    (out.codes.sum() + out.logits.sum()).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_local_groups_deal_patches_round_robin():
    model = _model(k_groups=3)
    assert model.group_order[:6].tolist() == [0, 3, 6, 9, 12, 15]


def test_global_only_model_has_no_local_branch():
    model = _model(dual_stream=False)
    assert model.local_branch is None and len(model.hash_heads) == 1


def test_pretrained_weights_load_from_a_local_file(tmp_path):
    source = create_backbone("vit_tiny_patch16_224", **TINY)
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path)
    loaded = create_backbone("vit_tiny_patch16_224", pretrained=str(path), **TINY)
    for name, tensor in source.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_pretrained_file_of_another_architecture_is_one_clear_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(create_backbone("vit_tiny_patch16_224", **{**TINY, "embed_dim": 16}).state_dict(), path)
    with pytest.raises(ValueError, match="model.pretrained=.*other.pth.*does not fit vit_tiny_patch16_224"):
        create_backbone("vit_tiny_patch16_224", pretrained=str(path), **TINY)


def test_missing_pretrained_file_and_unknown_backbone_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.pretrained=.*absent.pth"):
        create_backbone("vit_tiny_patch16_224", pretrained=str(tmp_path / "absent.pth"), **TINY)
    with pytest.raises(ValueError, match="model.backbone='vit_nope'"):
        create_backbone("vit_nope", **TINY)


def test_too_many_groups_for_the_patches_is_rejected():
    backbone = create_backbone(
        "vit_tiny_patch16_224", img_size=4, patch_size=2, depth=2, embed_dim=32, num_heads=2, in_chans=1
    )
    with pytest.raises(ValueError, match="k_groups=6 exceeds the 4 patch tokens"):
        TransHash(backbone=backbone, bits=64, k_groups=6, num_classes=10)


def test_pretrained_backbones_are_normalised_as_their_weights_expect():
    from hashtune.config import load_config
    from hashtune.train.model import preprocessing

    imagenet = preprocessing(
        load_config(overrides=["model.backbone=deit_tiny_patch16_224", "model.pretrained=/weights.pth"])
    )
    assert imagenet.mean == pytest.approx((0.485, 0.456, 0.406)) and imagenet.std == pytest.approx(
        (0.229, 0.224, 0.225)
    )
    assert imagenet.interpolation == "bicubic" and imagenet.crop_pct == pytest.approx(0.9)  # timm's deit_tiny config
    scratch = preprocessing(load_config())
    assert scratch.mean == (0.5, 0.5, 0.5) and scratch.std == (0.5, 0.5, 0.5)
