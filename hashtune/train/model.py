"""TransHash: a timm ViT whose last block splits into a global and a local (K-group) branch.

Chen et al. 2021, "TransHash", Sec. 3.2 and Fig. 2: blocks `[:-1]` of the backbone are shared; the
last block is duplicated into a global branch (its class-token output is the global feature) and a
local branch, which reorders the patch tokens into K groups, prepends the shared class token to each
and passes each group through the local copy of the block (the class-token outputs are the K local
features, as in TransReID's jigsaw branch). One linear hash head per feature; He & Wei (2023) add a
linear classifier on the concatenated code.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import NamedTuple

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from hashtune.config import Config
from hashtune.data import Preprocessing
from hashtune.errors import InputError, MissingFileError
from hashtune.train.bits import MIN_LOCAL_BITS, bit_allocation

__all__ = ["HashOutput", "TransHash", "create_backbone", "preprocessing"]


class HashOutput(NamedTuple):
    """What `TransHash.forward` returns."""

    codes: torch.Tensor
    """Continuous codes in (-1, 1), all heads concatenated, shape (n, bits)."""
    head_codes: tuple[torch.Tensor, ...]
    """The same codes split per head, global head first."""
    logits: torch.Tensor
    """Class logits of the classifier on `codes`, shape (n, num_classes)."""


def create_backbone(
    name: str,
    *,
    pretrained: str = "",
    img_size: int | None = None,
    patch_size: int | None = None,
    depth: int | None = None,
    embed_dim: int | None = None,
    num_heads: int | None = None,
    in_chans: int = 3,
    drop_path_rate: float = 0.0,
) -> VisionTransformer:
    """A timm ViT without its classifier; `pretrained` is a local weight file (never downloaded).

    Size arguments left as None keep the registered model's values.
    """
    overrides = dict(img_size=img_size, patch_size=patch_size, depth=depth, embed_dim=embed_dim, num_heads=num_heads)
    kwargs = {key: value for key, value in overrides.items() if value is not None}
    if name not in timm.list_models():
        raise InputError(
            f"model.backbone={name!r} is not a timm model; e.g. vit_tiny_patch16_224, vit_base_patch16_224"
        )
    if pretrained and not Path(pretrained).is_file():
        raise MissingFileError(
            f"model.pretrained={pretrained!r} is not a file; give a local .pth/.safetensors path or ''"
        )
    try:
        backbone = timm.create_model(
            name,
            pretrained=bool(pretrained),
            pretrained_cfg_overlay=dict(file=str(pretrained)) if pretrained else None,
            num_classes=0,
            in_chans=in_chans,
            drop_path_rate=drop_path_rate,
            **kwargs,
        )
    except RuntimeError as error:
        if not pretrained:
            raise
        first_line = str(error).strip().splitlines()[0]
        raise InputError(f"model.pretrained={pretrained!r} does not fit {name} with {kwargs}: {first_line}") from None
    if not isinstance(backbone, VisionTransformer) or backbone.cls_token is None:
        raise InputError(f"model.backbone={name!r} is not a timm VisionTransformer with a class token")
    return backbone


def preprocessing(config: Config) -> Preprocessing:
    """The input preprocessing the weights expect: timm's `resolve_data_config` of the backbone's pretrained
    config (mean, std, interpolation, crop) when `model.pretrained` is set; hashtune's scratch default otherwise."""
    if not config.model.pretrained:
        return Preprocessing()
    from timm.data import resolve_data_config

    resolved = resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(config.model.backbone).to_dict())
    return Preprocessing(
        mean=tuple(resolved["mean"]),
        std=tuple(resolved["std"]),
        interpolation=resolved["interpolation"],
        crop_pct=float(resolved["crop_pct"]),
    )


def _group_order(num_patches: int, k_groups: int) -> torch.Tensor:
    """Patch order that deals tokens round-robin into K groups, so each group spans the whole image."""
    return torch.argsort(torch.arange(num_patches) % k_groups, stable=True)


class TransHash(nn.Module):
    """TransHash's dual-stream hashing network on a timm ViT backbone.

    Args:
        backbone: a timm `VisionTransformer` (see `create_backbone`); its last block and final norm
            become the global branch, and a copy of them the local branch.
        bits: total code length.
        k_groups: number of local groups K.
        num_classes: classes of the classifier on the code.
        dual_stream: False is the w/o P ablation (global branch only, all bits on it).
        min_local_bits: see `bit_allocation`.
    """

    def __init__(
        self,
        *,
        backbone: VisionTransformer,
        bits: int,
        k_groups: int,
        num_classes: int,
        dual_stream: bool = True,
        min_local_bits: int = MIN_LOCAL_BITS,
    ) -> None:
        super().__init__()
        self.bits = bits
        self.k_groups = k_groups
        self.dual_stream = dual_stream
        self.head_bits = bit_allocation(bits, k_groups, dual_stream, min_local_bits)
        self.backbone = backbone
        self.num_prefix_tokens = backbone.num_prefix_tokens
        width = backbone.num_features
        self.global_branch = nn.Sequential(backbone.blocks[-1], backbone.norm)
        self.local_branch = copy.deepcopy(self.global_branch) if dual_stream else None
        num_patches = backbone.patch_embed.num_patches
        if dual_stream and k_groups > num_patches:
            raise InputError(
                f"k_groups={k_groups} exceeds the {num_patches} patch tokens; use k_groups <= {num_patches}"
            )
        self.register_buffer("group_order", _group_order(num_patches, k_groups), persistent=False)
        self.hash_heads = nn.ModuleList(nn.Linear(width, head_bits) for head_bits in self.head_bits)
        self.classifier = nn.Linear(bits, num_classes)

    def shared_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens after the shared blocks `[:-1]`, class token first."""
        backbone = self.backbone
        tokens = backbone.norm_pre(backbone.patch_drop(backbone._pos_embed(backbone.patch_embed(images))))
        for block in backbone.blocks[:-1]:
            tokens = block(tokens)
        return tokens

    def local_features(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Class-token outputs of the local branch, one per group."""
        cls_token = tokens[:, :1]
        patches = tokens[:, self.num_prefix_tokens :][:, self.group_order]
        groups = torch.tensor_split(patches, self.k_groups, dim=1)
        if len({group.shape[1] for group in groups}) == 1:  # equal groups: one batched pass
            stacked = torch.cat([torch.cat([cls_token, group], dim=1) for group in groups], dim=0)
            return list(self.local_branch(stacked)[:, 0].unflatten(0, (self.k_groups, -1)).unbind(0))
        return [self.local_branch(torch.cat([cls_token, group], dim=1))[:, 0] for group in groups]

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The global feature, then the K local features (none without the dual stream)."""
        tokens = self.shared_tokens(images)
        features = [self.global_branch(tokens)[:, 0]]
        if self.local_branch is not None:
            features.extend(self.local_features(tokens))
        return features

    def forward(self, images: torch.Tensor) -> HashOutput:
        head_codes = tuple(torch.tanh(head(feature)) for head, feature in zip(self.hash_heads, self.features(images)))
        codes = torch.cat(head_codes, dim=1)
        return HashOutput(codes=codes, head_codes=head_codes, logits=self.classifier(codes))
