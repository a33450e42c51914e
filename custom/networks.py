"""Dual Self-Distillation wrapper that attaches training-only heads to any U-shaped backbone."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers import Conv

__all__ = [
    "TAP_INPUT_SUFFIX",
    "BottleneckHead",
    "DSDNet",
    "DeferredLogits",
    "parse_tap",
    "run_with_taps",
    "tapped_module",
    "upsampling_steps",
]

#: A tap named ``"<module>:input"`` reads the first positional input of the module instead of its output.
TAP_INPUT_SUFFIX = ":input"

#: Keys of the dictionary returned by :class:`DSDNet` in training mode.
PRED_KEY, ENCODER_KEY, DECODER_KEY = "pred", "encoder", "decoder"


def parse_tap(tap: str) -> tuple[str, bool]:
    """Split a tap specification into the module name and whether the module's input is tapped.

    Args:
        tap: ``"decoder3"`` taps the output of ``decoder3``; ``"decoder5:input"`` taps its first input.

    Returns:
        ``(module_name, is_input)``.
    """
    if tap.endswith(TAP_INPUT_SUFFIX):
        return tap[: -len(TAP_INPUT_SUFFIX)], True
    return tap, False


def upsampling_steps(scale: Sequence[int]) -> list[tuple[int, ...]]:
    """Decompose a per-axis integer scale factor into transposed-convolution strides.

    Factors of two come first, one step each, so that isotropic powers of two need a single
    shared ``x2`` kernel; an odd remainder of an axis is taken in one final step.

    Args:
        scale: integer upsampling factor of each spatial axis.

    Returns:
        The stride of each step, in order; empty when every factor is 1.
    """
    remaining = list(scale)
    steps: list[tuple[int, ...]] = []
    while any(s % 2 == 0 for s in remaining):
        step = tuple(2 if s % 2 == 0 else 1 for s in remaining)
        remaining = [s // f for s, f in zip(remaining, step)]
        steps.append(step)
    if any(s > 1 for s in remaining):
        steps.append(tuple(remaining))
    return steps


class DeferredLogits(NamedTuple):
    """A head's class logits before upsampling, with the one linear map that takes them to input resolution.

    Transposed convolutions with kernel = stride and nothing between them compose into a single one
    whose kernel and stride are the total scale, with a bias that depends on the position inside each
    kernel block. Keeping the logits in this form lets a loss upsample them block by block instead of
    holding a full-resolution tensor per head.

    A head without upsampling goes one step further: its 1x1x1 convolution is a transposed convolution
    of kernel and stride 1, so ``low_res`` is then the tapped feature map itself and ``weight`` the
    convolution's, and the loss applies it block by block instead of holding the head's
    full-resolution logits.

    Attributes:
        low_res: ``(B, C, *spatial)`` at the tap's resolution: the logits of the head's 1x1x1
            convolution (``C = K``), or for a head of scale 1 the tapped features.
        weight: ``(C, K, *scale)`` transposed-convolution kernel of the whole upsampling.
        bias: ``(K, *scale)`` bias of each position inside a kernel block.
    """

    low_res: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    @property
    def scale(self) -> tuple[int, ...]:
        """Per-axis factor from ``low_res`` to input resolution."""
        return tuple(self.weight.shape[2:])

    def upsample(self) -> torch.Tensor:
        """The logits at input resolution, as :meth:`BottleneckHead.forward` computes them."""
        transposed_conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[len(self.scale) - 1]
        logits = transposed_conv(self.low_res, self.weight.to(self.low_res.dtype), stride=self.scale)
        blocks, block_bias = list(logits.shape[:2]), [self.bias.shape[0]]
        for size, factor in zip(self.low_res.shape[2:], self.scale):
            blocks += [size, factor]
            block_bias += [1, factor]
        return (logits.view(blocks) + self.bias.to(logits.dtype).view(block_bias)).view(logits.shape)


class BottleneckHead(nn.Module):
    """The paper's bottleneck module: a 1x1x1 convolution to class logits, then transposed-convolution upsampling.

    Upsampling repeats one transposed convolution per distinct stride (for an isotropic power-of-two
    scale, a single ``x2`` kernel applied ``log2(scale)`` times, as the authors' code does), which
    keeps the head a few hundred parameters regardless of depth.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: channels of the tapped feature map.
        num_classes: number of output classes K.
        scale: per-axis integer factor from the tapped feature map to the network input size.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, scale: Sequence[int]) -> None:
        super().__init__()
        self.to_logits = Conv[Conv.CONV, spatial_dims](in_channels, num_classes, kernel_size=1)
        self.steps = upsampling_steps(scale)
        transposed = Conv[Conv.CONVTRANS, spatial_dims]
        self.upsample = nn.ModuleDict(
            {_stride_key(s): transposed(num_classes, num_classes, kernel_size=s, stride=s) for s in set(self.steps)}
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.to_logits(features)
        for step in self.steps:
            logits = self.upsample[_stride_key(step)](logits)
        return logits

    def composed_upsampling(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole upsampling chain as one transposed convolution: ``(weight, bias)`` of :class:`DeferredLogits`.

        The chain is linear plus a bias, so its response to each one-hot logit vector, less its response to
        zeros, is the composed kernel, and its response to zeros the composed bias: a few tiny transposed
        convolutions of the head's own modules. Computed in float32 even under autocast: the kernel is a
        few thousand numbers, and rounding it would make the deferred logits differ from :meth:`forward`'s.
        """
        reference = self.to_logits.weight
        classes, dims = reference.shape[0], reference.dim() - 2
        with torch.autocast(reference.device.type, enabled=False):
            impulses = torch.eye(classes + 1, classes, dtype=reference.dtype, device=reference.device)
            response = impulses.view(classes + 1, classes, *[1] * dims)  # one-hot logits, then zeros
            for step in self.steps:
                response = self.upsample[_stride_key(step)](response)
        bias = response[classes]
        return response[:classes] - bias, bias

    def defer(self, features: torch.Tensor) -> DeferredLogits:
        """The head's logits in the deferred form: the 1x1x1 convolution is applied, the upsampling is not.

        A head without upsampling defers its convolution too (see :class:`DeferredLogits`).
        """
        if not self.steps:
            conv = self.to_logits
            return DeferredLogits(features, conv.weight.transpose(0, 1), conv.bias.view(-1, *conv.weight.shape[2:]))
        return DeferredLogits(self.to_logits(features), *self.composed_upsampling())


def _stride_key(stride: Sequence[int]) -> str:
    return "x".join(map(str, stride))


class DSDNet(nn.Module):
    """Wraps a U-shaped backbone for Dual Self-Distillation training without modifying it.

    Forward hooks read the tapped stages of ``backbone`` by module name; each tap feeds a
    :class:`BottleneckHead` that produces class logits at input resolution. Channel counts and
    scale factors are found by one probe forward pass at construction.

    In training mode the forward pass returns a dictionary ``{"pred": Y, "encoder": [E_1..E_Z],
    "decoder": [D_1..D_Z]}`` of logits, encoders ordered shallow to deep (the last is the encoder
    teacher) and decoders deepest first (the first, D_1, is the decoder teacher). In eval mode the
    heads do not run and the output is exactly ``backbone(x)``; the deployable model is ``backbone``
    and its ``state_dict`` is what a bundle saves.

    Args:
        backbone: any ``nn.Module`` mapping an image batch to class logits.
        encoder_taps: module names of encoder stages E_1..E_Z, shallow to deep. A name ending in
            ``":input"`` taps the module's first input instead of its output.
        decoder_taps: module names of decoder stages D_1..D_Z, deepest decoder (teacher) first.
            The stage producing the main output must not be tapped.
        num_classes: number of output classes K of each head.
        in_channels: image channels, used for the probe pass.
        roi_size: spatial size of the training patches, used for the probe pass.
        share_heads: give taps whose feature maps have the same channel count and scale one shared
            head, as the authors' nnU-Net and SwinUNETR share the head of an encoder stage with that of
            the decoder stage at the same resolution. ``False`` gives every tap its own head.
        defer_upsampling: in training mode return each head's logits as :class:`DeferredLogits`, which
            :class:`~custom.losses.DSDLoss` upsamples block by block, so that no full-resolution logits
            of a head are ever held (the bundles' setting). ``False`` returns full-resolution tensors.

    Without taps (the plain-backbone ablation) the training output holds empty head lists.

    Raises:
        KeyError: a tap names no submodule of ``backbone``.
        ValueError: a tapped feature map does not divide the input size by an integer.

    Example::

        backbone = UNETR(in_channels=1, out_channels=8, img_size=96)
        net = DSDNet(
            backbone,
            encoder_taps=["encoder1", "encoder2", "encoder3", "encoder4"],
            decoder_taps=["decoder3", "decoder4", "decoder5", "decoder5:input"],
            num_classes=8, in_channels=1, roi_size=(96, 96, 96),
        )
    """

    def __init__(
        self,
        backbone: nn.Module,
        encoder_taps: Sequence[str],
        decoder_taps: Sequence[str],
        num_classes: int,
        in_channels: int,
        roi_size: Sequence[int],
        share_heads: bool = False,
        defer_upsampling: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.defer_upsampling = defer_upsampling
        self.encoder_taps = list(encoder_taps)
        self.decoder_taps = list(decoder_taps)
        for tap in self.taps:
            tapped_module(backbone, tap, "DSDNet tap")

        spatial_dims = len(roi_size)
        shapes = self._probe(in_channels, roi_size) if self.taps else {}
        heads: dict[str, BottleneckHead] = {}
        by_signature: dict[tuple, BottleneckHead] = {}
        for tap, shape in shapes.items():
            scale = _scale(tap, shape, roi_size)
            signature = (shape[1], scale) if share_heads else (tap,)
            if signature not in by_signature:
                by_signature[signature] = BottleneckHead(spatial_dims, shape[1], num_classes, scale)
            # a shared head is registered under each of its taps; parameters() still counts it once
            heads[_head_key(tap)] = by_signature[signature]
        self.heads = nn.ModuleDict(heads)

    @property
    def taps(self) -> list[str]:
        """All taps, encoders then decoders."""
        return self.encoder_taps + self.decoder_taps

    @torch.no_grad()
    def _probe(self, in_channels: int, roi_size: Sequence[int]) -> dict[str, torch.Size]:
        """Run the backbone once on a dummy batch to read the shape of every tapped feature map."""
        parameter = next(self.backbone.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        modes = {module: module.training for module in self.backbone.modules()}
        self.backbone.eval()  # keeps normalisation running statistics untouched
        try:
            features = self._run_backbone(torch.zeros(1, in_channels, *roi_size, device=device))[1]
        finally:
            for module, training in modes.items():
                module.training = training
        return {tap: features[tap].shape for tap in self.taps}

    def _run_backbone(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the backbone and collect the tapped features (:func:`run_with_taps`)."""
        return run_with_taps(self.backbone, x, self.taps, "DSDNet")

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor | list[torch.Tensor | DeferredLogits]]:
        if not self.training:
            return self.backbone(x)
        pred, features = self._run_backbone(x)
        return {
            PRED_KEY: pred,
            ENCODER_KEY: [self._head_logits(tap, features[tap]) for tap in self.encoder_taps],
            DECODER_KEY: [self._head_logits(tap, features[tap]) for tap in self.decoder_taps],
        }

    def head_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every head's logits at input resolution, in either mode: what each auxiliary head segments.

        Validation calls this to score the heads (:class:`custom.head_scores.HeadDice`); training and the
        deployed model never do.

        Args:
            x: an image batch.

        Returns:
            Tap -> ``(B, K, *spatial)`` logits, encoders E_1..E_Z then decoders D_1..D_Z; empty without taps.
        """
        if not self.taps:
            return {}
        features = self._run_backbone(x)[1]
        return {tap: self.heads[_head_key(tap)](features[tap]) for tap in self.taps}

    def _head_logits(self, tap: str, features: torch.Tensor) -> torch.Tensor | DeferredLogits:
        head = self.heads[_head_key(tap)]
        return head.defer(features) if self.defer_upsampling else head(features)


def tapped_module(network: nn.Module, tap: str, what: str = "tap") -> nn.Module:
    """The submodule of ``network`` that a tap reads.

    Args:
        network: the tapped network.
        tap: a submodule name from ``network.named_modules()``, optionally with the ``":input"`` suffix.
        what: how the error message introduces the tap, e.g. ``"DSDNet tap"`` or ``"EMKD teacher tap"``.

    Raises:
        KeyError: ``network`` has no such submodule; the message names the module and lists close matches.
    """
    name, _ = parse_tap(tap)
    try:
        if not name:
            raise AttributeError(name)
        return network.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in network.named_modules() if n]
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        hint = (
            f"close matches: {', '.join(repr(n) for n in close)}"
            if close
            else f"its top-level modules are {', '.join(repr(n) for n, _ in network.named_children())}"
        )
        raise KeyError(
            f"{what} '{tap}': {type(network).__name__} has no submodule named '{name}'; {hint}. "
            "Any name of network.named_modules() can be tapped."
        ) from None


def run_with_taps(
    network: nn.Module, x: torch.Tensor, taps: Sequence[str], what: str = "network"
) -> tuple[Any, dict[str, torch.Tensor]]:
    """Run ``network(x)`` and collect the feature map of every tap, by module name.

    The hooks live only for this call, so the network carries none when it is saved, copied or exported,
    and a deep copy of a wrapper taps its own network.

    Args:
        network: the network to run.
        x: its input.
        taps: module names (see :func:`tapped_module`); ``"<module>:input"`` reads the module's first input.
        what: how the error message names the network.

    Returns:
        ``(network(x), {tap: feature map})``.

    Raises:
        KeyError: a tap names no submodule.
        RuntimeError: a tapped module was not run by the forward pass.
    """
    features: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for tap in taps:
            module = tapped_module(network, tap, f"{what} tap")
            if parse_tap(tap)[1]:
                handles.append(module.register_forward_pre_hook(partial(_store_input, features, tap)))
            else:
                handles.append(module.register_forward_hook(partial(_store_output, features, tap)))
        output = network(x)
    finally:
        for handle in handles:
            handle.remove()
    missing = [tap for tap in taps if tap not in features]
    if missing:
        raise RuntimeError(f"{what} taps {missing} were not reached by the forward pass of {type(network).__name__}.")
    return output, features


def _store_output(features: dict[str, torch.Tensor], tap: str, module: nn.Module, args: tuple, output) -> None:
    features[tap] = output


def _store_input(features: dict[str, torch.Tensor], tap: str, module: nn.Module, args: tuple) -> None:
    features[tap] = args[0]


def _head_key(tap: str) -> str:
    # ModuleDict keys may not contain "."; module paths such as "vit.blocks.11" do.
    return tap.replace(".", "_").replace(":", "_")


def _scale(tap: str, shape: torch.Size, roi_size: Sequence[int]) -> tuple[int, ...]:
    spatial = tuple(shape[2:])
    if len(spatial) != len(roi_size) or any(r % s for r, s in zip(roi_size, spatial)):
        raise ValueError(
            f"DSDNet tap '{tap}': feature map of spatial size {spatial} does not divide the input size "
            f"{tuple(roi_size)} by an integer factor per axis."
        )
    return tuple(r // s for r, s in zip(roi_size, spatial))
