"""Small trainable adapters on a frozen SAM 2.1 model (RFMedSAM 2 style, as far as published).

Sites (each bottleneck width set in `AdapterConfig`; 0 switches a site off):

- encoder: after the attention of every Hiera block, a depth-wise-convolution adapter over the
  block's (B, H, W, C) token grid (inside windowed blocks the grid is one window);
- neck: beside every FPN lateral conv, a low-rank linear conv pair (no nonlinearity, so it folds
  into the neck conv: see `sam2refine.sam.adapter_files.merge_adapters`);
- memory: after every memory-attention layer, a depth-wise-convolution adapter over the current
  frame's tokens (the layer's output has the query layout, one token per grid cell; the memory
  tokens with their object pointers are keys only and never reach the adapter);
- decoder: in the mask decoder's two-way transformer, a depth-wise-convolution adapter on the
  image tokens (after each image-to-token attention) and a bottleneck MLP on the prompt tokens
  (after each self-, token-to-image and final attention), since prompt tokens form no grid.

Every adapter's last projection starts at zero, so an adapted model gives exactly the base
model's outputs until it is trained. Adapters hang off their host modules as a child named
`adapter` plus a forward hook that adds their output; the sam2 classes are not edited and the
base weights keep their official state-dict names.

Attach adapters BEFORE making a `Session`: its feature cache keeps the image features the
model computed when each slice was first seen.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from sam2refine.errors import AdapterError

log = logging.getLogger(__name__)

CONFIG_ATTR = "sam2refine_adapter_config"  # set on the model by add_adapters
MERGED_ATTR = "sam2refine_merged_adapters"  # names of adapters folded into base weights
TRAINED_DECODER_ATTR = "sam2refine_train_decoder"  # set by freeze_base(train_decoder=True)


@dataclass(frozen=True)
class AdapterConfig:
    """Bottleneck width per site; the defaults keep SAM 2.1 tiny's adapters under 1 %."""

    encoder_bottleneck: int = 16
    neck_bottleneck: int = 16
    memory_bottleneck: int = 32
    decoder_bottleneck: int = 16

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise AdapterError(f"Adapter setting {f.name} must be a whole number >= 0 "
                                   f"(0 switches the site off), not {value!r}.")

    def to_json(self) -> str:
        """The config as compact JSON (stored in adapter files)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AdapterConfig:
        """Parse `to_json` output; unknown or malformed settings are an AdapterError."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AdapterError(f"Adapter config is not valid JSON: {exc}") from exc
        known = {f.name for f in fields(cls)}
        if not isinstance(raw, dict) or set(raw) - known:
            extra = sorted(set(raw) - known) if isinstance(raw, dict) else raw
            raise AdapterError(f"Unknown adapter settings {extra}; this sam2refine knows "
                               f"{sorted(known)}. Update sam2refine to use this file.")
        return cls(**raw)


class ConvAdapter(nn.Module):
    """Linear down → depth-wise 3×3 conv over the token grid → GELU → Linear up (zero-init).

    `layout` says how the host's output holds the grid: "bhwc" (Hiera blocks), "bnc" (tokens
    batch first, `grid` = (H, W)) or "nbc" (tokens first).
    """

    def __init__(self, dim: int, bottleneck: int, layout: str = "bhwc",
                 grid: tuple[int, int] | None = None, **factory: object) -> None:
        super().__init__()
        if layout not in ("bhwc", "bnc", "nbc") or (layout != "bhwc" and grid is None):
            raise ValueError(f"bad adapter layout {layout!r} / grid {grid}")
        self.layout, self.grid = layout, grid
        self.down = nn.Linear(dim, bottleneck, **factory)
        self.dwconv = nn.Conv2d(bottleneck, bottleneck, 3, padding=1, groups=bottleneck,
                                **factory)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim, **factory)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(x)
        if self.layout == "nbc":
            h = h.transpose(0, 1)
        if self.layout == "bhwc":
            grid = h.permute(0, 3, 1, 2)
        else:
            b, n, c = h.shape
            grid = h.transpose(1, 2).reshape(b, c, *self.grid)
        grid = self.act(self.dwconv(grid))
        if self.layout == "bhwc":
            h = grid.permute(0, 2, 3, 1)
        else:
            h = grid.flatten(2).transpose(1, 2)
            if self.layout == "nbc":
                h = h.transpose(0, 1)
        return self.up(h)

    def hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook on the host: its output plus this adapter's correction of it."""
        return output + self(output)


class TokenAdapter(nn.Module):
    """Bottleneck MLP for tokens without a grid (the decoder's prompt tokens); zero-init up."""

    def __init__(self, dim: int, bottleneck: int, **factory: object) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck, **factory)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim, **factory)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))

    def hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook on the host: its output plus this adapter's correction of it."""
        return output + self(output)


class NeckAdapter(nn.Module):
    """Low-rank conv beside an FPN lateral conv: down (host's kernel) → 1×1 up (zero-init).

    Purely linear, so `merge_into(host)` folds it into the host conv exactly.
    """

    def __init__(self, host: nn.Conv2d, bottleneck: int, **factory: object) -> None:
        super().__init__()
        if host.groups != 1:
            raise AdapterError("Neck adapters need an ungrouped neck conv.")
        self.down = nn.Conv2d(host.in_channels, bottleneck, host.kernel_size, host.stride,
                              host.padding, host.dilation, padding_mode=host.padding_mode,
                              **factory)
        self.up = nn.Conv2d(bottleneck, host.out_channels, 1, **factory)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook on the host conv: its output plus this adapter applied to its input."""
        return output + self(args[0])

    @torch.no_grad()
    def merge_into(self, host: nn.Conv2d) -> None:
        """Fold up∘down into the host conv's weight and bias (computed in float32)."""
        up = self.up.weight.float().flatten(1)  # (out, r)
        down = self.down.weight.float()  # (r, in, kh, kw)
        weight = torch.einsum("or,rikl->oikl", up, down)
        bias = up @ self.down.bias.float() + self.up.bias.float()
        host.weight.add_(weight.to(host.weight.dtype))
        if host.bias is None:
            host.bias = nn.Parameter(bias.to(host.weight.dtype))
        else:
            host.bias.add_(bias.to(host.bias.dtype))


_SITE_PREFIXES = (("image_encoder.trunk", "encoder"), ("image_encoder.neck", "neck"),
                  ("memory_attention", "memory"), ("sam_mask_decoder", "decoder"))


def _factory(host: nn.Module) -> dict[str, object]:
    param = next(host.parameters())
    return {"device": param.device, "dtype": param.dtype}


def _attach(host: nn.Module, adapter: nn.Module) -> None:
    host.add_module("adapter", adapter)
    host.register_forward_hook(adapter.hook)


def detach_adapter(host: nn.Module) -> None:
    """Remove `host`'s adapter and the hook that adds it; the host computes as before."""
    adapter = host.adapter
    for key, hook in list(host._forward_hooks.items()):
        if getattr(hook, "__self__", None) is adapter:
            del host._forward_hooks[key]
    del host.adapter


def _sites(model: nn.Module, config: AdapterConfig) -> list[tuple[nn.Module, nn.Module]]:
    """(host, adapter) pairs for every enabled site of a SAM2Base model."""
    pairs: list[tuple[nn.Module, nn.Module]] = []
    if config.encoder_bottleneck:
        for block in model.image_encoder.trunk.blocks:
            adapter = ConvAdapter(block.dim_out, config.encoder_bottleneck, "bhwc",
                                  **_factory(block.attn))
            pairs.append((block.attn, adapter))
    if config.neck_bottleneck:
        for seq in model.image_encoder.neck.convs:
            pairs.append((seq.conv, NeckAdapter(seq.conv, config.neck_bottleneck,
                                                **_factory(seq.conv))))
    side = model.sam_image_embedding_size
    if config.memory_bottleneck:
        mem = model.memory_attention
        layout = "bnc" if mem.batch_first else "nbc"
        for layer in mem.layers:
            pairs.append((layer, ConvAdapter(mem.d_model, config.memory_bottleneck, layout,
                                             (side, side), **_factory(layer))))
    if config.decoder_bottleneck:
        transformer = model.sam_mask_decoder.transformer
        dim, r = transformer.embedding_dim, config.decoder_bottleneck
        for block in transformer.layers:
            for host in (block.self_attn, block.cross_attn_token_to_image):
                pairs.append((host, TokenAdapter(dim, r, **_factory(host))))
            pairs.append((block.cross_attn_image_to_token,
                          ConvAdapter(dim, r, "bnc", (side, side),
                                      **_factory(block.cross_attn_image_to_token))))
        final = transformer.final_attn_token_to_image
        pairs.append((final, TokenAdapter(dim, r, **_factory(final))))
    return pairs


def adapter_config(model: nn.Module) -> AdapterConfig | None:
    """The config of the adapters attached to `model`, or None if it has none."""
    return getattr(model, CONFIG_ATTR, None)


def add_adapters(model: nn.Module, config: AdapterConfig | None = None) -> nn.Module:
    """Attach zero-initialised adapters to a SAM2Base model in place; returns the model.

    Adding the same config again changes nothing; a different config is an AdapterError.
    """
    config = config or AdapterConfig()
    current = adapter_config(model)
    if current is not None:
        if current != config:
            raise AdapterError(f"The model already has adapters {current}; build a fresh model "
                               f"to attach {config}.")
        return model
    if not hasattr(model, "image_encoder") or not hasattr(model, "sam_mask_decoder"):
        raise AdapterError("Adapters attach to a SAM 2 model built by build_model().")
    for host, adapter in _sites(model, config):
        _attach(host, adapter)
    setattr(model, CONFIG_ATTR, config)
    setattr(model, MERGED_ATTR, ())
    log.info(parameter_summary(model))
    return model


def remove_adapters(model: nn.Module) -> nn.Module:
    """Take every adapter off `model` in place, leaving the base model; returns the model.

    Refused after merge_adapters, whose changes to the base weights cannot be undone.
    """
    if getattr(model, MERGED_ATTR, ()):
        raise AdapterError("Adapters merged into the base weights cannot be removed; rebuild "
                           "the model from its checkpoint instead.")
    for name, _ in named_adapters(model):
        detach_adapter(model.get_submodule(name.rsplit(".", 1)[0]))
    for attr in (CONFIG_ATTR, MERGED_ATTR, TRAINED_DECODER_ATTR):
        if hasattr(model, attr):
            delattr(model, attr)
    return model


def named_adapters(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every adapter still attached to `model`."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, ConvAdapter | TokenAdapter | NeckAdapter)]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter parameters keyed by their full names in `model.state_dict()`."""
    return {f"{name}.{key}": value for name, module in named_adapters(model)
            for key, value in module.state_dict().items()}


def expected_adapter_shapes(model: nn.Module, config: AdapterConfig) -> dict[str, torch.Size]:
    """The adapter tensors `config` gives `model` (names and shapes), without attaching any."""
    names = {id(module): name for name, module in model.named_modules()}
    return {f"{names[id(host)]}.adapter.{key}": value.shape
            for host, adapter in _sites(model, config)
            for key, value in adapter.state_dict().items()}


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of all adapters attached to `model`."""
    return [p for _, module in named_adapters(model) for p in module.parameters()]


def freeze_base(model: nn.Module, train_decoder: bool = False) -> list[nn.Parameter]:
    """Freeze every base weight; adapters (and the mask decoder if asked) stay trainable.

    Returns the trainable parameters. With `train_decoder`, `save_adapters` also stores the
    mask decoder's weights, since the adapters alone would not reproduce the trained model.
    """
    if adapter_config(model) is None:
        raise AdapterError("The model has no adapters; call add_adapters(model) first.")
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = adapter_parameters(model)
    if train_decoder:
        seen = {id(p) for p in trainable}
        trainable += [p for p in model.sam_mask_decoder.parameters() if id(p) not in seen]
    for p in trainable:
        p.requires_grad_(True)
    setattr(model, TRAINED_DECODER_ATTR, train_decoder)
    return trainable


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(adapter parameters, all parameters of the model including the adapters)."""
    adapters = sum(p.numel() for p in adapter_parameters(model))
    return adapters, sum(p.numel() for p in model.parameters())


def parameter_summary(model: nn.Module) -> str:
    """One line with the adapter count, its share of the base model and the count per site."""
    adapters, total = count_parameters(model)
    base = total - adapters
    per_site: dict[str, int] = {}
    for name, module in named_adapters(model):
        site = next(s for prefix, s in _SITE_PREFIXES if name.startswith(prefix))
        per_site[site] = per_site.get(site, 0) + sum(p.numel() for p in module.parameters())
    sites = ", ".join(f"{k} {v:,}" for k, v in per_site.items())
    return (f"Adapters: {adapters:,} parameters = {100 * adapters / base:.3f} % of the base "
            f"model's {base:,} ({sites})")
