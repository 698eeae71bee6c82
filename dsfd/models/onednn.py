"""CPU inference convolutions through oneDNN directly: weights packed once, activations fused.

PyTorch's eager ``F.conv2d`` on the CPU hands the weight to oneDNN in
PyTorch's layout on every call, and oneDNN reorders it into its blocked
layout each time; an activation after the convolution is one more full pass
over the output. For a small network at 640x480 those fixed costs are a large
part of the forward (the default model's stem runs 8- and 16-channel maps at
240x320). :func:`use_onednn_convolutions` turns every ``Conv2d`` of an eval
network into :class:`OneDNNConv2d`, which

* packs its weight into oneDNN's layout once an input shape repeats (a
  video, a fixed canvas; see :meth:`OneDNNConv2d._weight_for`), and
* where an ``nn.Sequential`` applies a ``ReLU`` or ``LeakyReLU`` right after
  it (a folded BatchNorm's ``Identity`` may sit in between), applies that
  activation inside the convolution, on the float accumulator, and makes the
  activation module an ``Identity``.

Both run through ``torch.ops.mkldnn._convolution_pointwise``, the op that
``torch.compile``'s CPU freezing pass emits for the same patterns. The
module stays an ``nn.Conv2d`` (same parameters, ``state_dict`` and
attributes); anything other than a plain CPU inference call (autograd,
tracing, ONNX export, ``torch.compile``, another device, a dtype the
packed weight does not have) runs ``nn.Conv2d``'s own forward and then the
activation, so the results there are the unfused ones.

Numbers: the packed weight gives the same results as oneDNN's unpacked call;
a fused activation acts before the output is rounded to bfloat16, so bf16
outputs differ from conv-then-activation by at most one bf16 rounding step
(float32: identical up to the convolution's own float rounding). Speed and
the WIDER APs with and without: ``benchmarks/results/onednn_conv_vm.json``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["OneDNNConv2d", "IdentityFreeSequential", "onednn_available", "use_onednn_convolutions", "conv_from_weights", "conv_act"]

_FLOAT_TYPES = (torch.float32, torch.bfloat16)


_pointwise_op: Any = None


def _conv_pointwise(*args: Any) -> Tensor:
    """``torch.ops.mkldnn._convolution_pointwise.default``, looked up once (the lookup costs ~1 us a call)."""
    global _pointwise_op
    if _pointwise_op is None:
        _pointwise_op = torch.ops.mkldnn._convolution_pointwise.default
    return _pointwise_op(*args)


def version_of(t: Tensor) -> int:
    """``t._version``; -1 for a tensor made under ``inference_mode`` (no version counter; it cannot change).

    Asked first, not caught: reading ``_version`` of an inference tensor raises
    a C++ exception, which cost ~25 us per call (measured) on a path that runs
    once per convolution per image.
    """
    return -1 if t.is_inference() else t._version


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's fused convolution op (x86 and ARM builds do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class OneDNNConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that runs CPU inference through oneDNN with a packed weight and an optional activation.

    Build it with :meth:`from_conv`; see the module docstring.
    """

    activation: str
    negative_slope: float

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, activation: Optional[nn.Module] = None) -> "OneDNNConv2d":
        """``conv`` itself, re-classed (parameters shared, nothing copied), with ``activation`` fused."""
        if type(conv) is not nn.Conv2d:
            raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
        conv.__class__ = cls
        conv.activation, conv.negative_slope = "none", 0.0
        if isinstance(activation, nn.LeakyReLU):
            conv.activation, conv.negative_slope = "leaky_relu", float(activation.negative_slope)
        elif isinstance(activation, nn.ReLU):
            conv.activation = "relu"
        elif activation is not None:
            raise TypeError(f"cannot fuse a {type(activation).__name__}")
        conv._packed, conv._last_key, conv._hit = None, None, None
        return conv  # type: ignore[return-value]

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_packed"] = state["_hit"] = None  # a oneDNN tensor: neither copied nor pickled, packed again on demand
        return state

    def extra_repr(self) -> str:
        act = {"none": "", "relu": ", +ReLU", "leaky_relu": f", +LeakyReLU({self.negative_slope})"}[self.activation]
        return super().extra_repr() + act

    def _fast_path(self, x: Tensor) -> bool:
        # called per convolution per image: the cheap tests first (measured: 18 us per call otherwise)
        if x.device.type != "cpu" or torch.is_grad_enabled() or self.training or x.dim() != 4:
            return False
        w = self.weight
        if w.device.type != "cpu" or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return False
        if w.dtype not in _FLOAT_TYPES or (self.bias is not None and self.bias.dtype != w.dtype):
            return False
        if x.dtype != w.dtype:
            # autocast would cast the input to the weight's dtype: do the same; anything else is not ours
            if not (x.dtype in _FLOAT_TYPES and torch.is_autocast_enabled("cpu")
                    and torch.get_autocast_dtype("cpu") == w.dtype):
                return False
        # tracing (the TorchScript ONNX exporter traces too), torch.compile / torch.export: the plain ops
        return torch._C._get_tracing_state() is None and not torch.compiler.is_compiling()

    def _weight_for(self, x: Tensor) -> Tensor:
        """The weight packed for ``x``'s shape once that shape repeats, else the plain weight.

        oneDNN picks the packed layout (and with it the kernel) for one input
        shape: a weight packed for a tiny map made a dilated 144-channel conv
        on a 15x20 map 30x slower (measured), and packing again for every new
        shape cost more than it saved when photo sizes alternate. So the
        weight is packed on the second consecutive call with the same shape
        (a video, a letterbox canvas, a batch of equal photos) and used while
        the shape stays; a call with another shape runs the plain weight.
        """
        w = self.weight
        key = (w.data_ptr(), version_of(w), w.dtype, tuple(w.shape), tuple(x.shape))
        if self._packed is not None and self._packed[0] == key:
            return self._packed[1]
        if self._last_key != key:
            self._last_key = key
            return w
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
            w.detach().to_mkldnn(), list(self.padding), list(self.stride), list(self.dilation), self.groups,
            list(x.shape))
        self._packed = (key, packed)
        return packed

    def forward(self, x: Tensor) -> Tensor:
        return self.run(x, self.activation)

    def run(self, x: Tensor, activation: str) -> Tensor:
        """The convolution followed by ``activation`` (``"none"``, ``"relu"``; ``"leaky_relu"`` uses
        :attr:`negative_slope`), fused on the fast path; the module's own activation is not applied."""
        hit = self._hit
        # the repeated call (same shape, dtype, weight, mode as the call that packed): no Python beyond
        # these tests; the general path below costs ~15 us more per convolution (measured), and a small
        # network's forward runs ~75 of them
        if (hit is not None and x.shape == hit[0] and x.dtype == hit[1] and activation == hit[2]
                and not torch.is_grad_enabled() and x.is_cpu and not self.training
                and torch._C._get_tracing_state() is None and not torch.compiler.is_compiling()):
            w = self.weight
            if (w.data_ptr() == hit[3] and version_of(w) == hit[4] and self.bias is hit[5]
                    and (hit[6] is None or (torch.is_autocast_enabled("cpu")
                                            and torch.get_autocast_dtype("cpu") == hit[6]))):
                return _conv_pointwise(x if hit[6] is None else x.to(hit[6]), *hit[7])
        if not self._fast_path(x):
            y = super().forward(x)
            if activation == "relu":
                return torch.relu(y)
            if activation == "leaky_relu":
                return nn.functional.leaky_relu(y, self.negative_slope)
            return y
        in_dtype = x.dtype
        cast_to = self.weight.dtype if x.dtype != self.weight.dtype else None
        if cast_to is not None:
            x = x.to(cast_to)
        weight = self._weight_for(x)
        scalars: List[Any] = [self.negative_slope] if activation == "leaky_relu" else []
        args = (weight, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups,
                activation, scalars, "")
        if self._packed is not None and weight is self._packed[1]:
            w = self.weight
            self._hit = (x.shape, in_dtype, activation, w.data_ptr(), version_of(w), self.bias, cast_to, args)
        return _conv_pointwise(x, *args)


def conv_from_weights(weight: Tensor, bias: Optional[Tensor], padding: int, dilation: int,
                      groups: int = 1) -> OneDNNConv2d:
    """A stride-1 :class:`OneDNNConv2d` around existing tensors (not copied; no gradients), e.g. the
    concatenated weight of several convolutions that read the same input (or, with ``groups``, each
    its own group of input channels)."""
    out_channels, group_in_channels, kh, kw = weight.shape
    conv = nn.Conv2d(group_in_channels * groups, out_channels, (kh, kw), padding=padding, dilation=dilation,
                     groups=groups, bias=bias is not None, device="meta")
    conv.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        conv.bias = nn.Parameter(bias, requires_grad=False)
    return OneDNNConv2d.from_conv(conv.eval())


def conv_act(conv: nn.Module, x: Tensor, activation: str) -> Tensor:
    """``activation(conv(x))`` for an ``nn.Conv2d`` without an activation of its own, or whose fused one is
    ``activation`` (then applied once); fused when ``conv`` is a :class:`OneDNNConv2d` on its fast path.
    ``activation``: ``"none"`` or ``"relu"``."""
    if isinstance(conv, OneDNNConv2d) and conv.activation in ("none", activation):
        # (a ReLU that follows the conv in its Sequential was already fused into it: applied once, not twice)
        return conv.run(x, activation)
    y = conv(x)
    return torch.relu(y) if activation == "relu" else y


def _fusable_activation(seq: nn.Sequential, i: int) -> Tuple[Optional[int], Optional[nn.Module]]:
    """Index and module of the activation that directly follows child ``i`` (``Identity`` children skipped)."""
    children = list(seq)
    j = i + 1
    while j < len(children) and type(children[j]) is nn.Identity:
        j += 1
    if j < len(children) and type(children[j]) in (nn.ReLU, nn.LeakyReLU):
        return j, children[j]
    return None, None


def use_onednn_convolutions(module: nn.Module, fuse_activations: bool = True) -> int:
    """Turn every plain ``nn.Conv2d`` in ``module`` into :class:`OneDNNConv2d`, in place; returns how many.

    With ``fuse_activations``, a ``ReLU`` / ``LeakyReLU`` that follows a
    convolution inside an ``nn.Sequential`` (only there: a Sequential runs
    its children in order, so nothing else reads the convolution's output)
    moves into the convolution and is replaced by ``nn.Identity``. For eval
    networks that run on the CPU; a no-op without oneDNN.
    """
    if not onednn_available():
        return 0
    count = 0
    for parent in list(module.modules()):
        for position, child in enumerate(list(parent.children())):
            if type(child) is not nn.Conv2d:
                continue
            activation = None
            if fuse_activations and isinstance(parent, nn.Sequential):
                index, activation = _fusable_activation(parent, position)
                if index is not None:
                    parent[index] = nn.Identity()
            OneDNNConv2d.from_conv(child, activation)
            count += 1
    if fuse_activations:
        for seq in list(module.modules()):
            if type(seq) is nn.Sequential and any(type(m) is nn.Identity for m in seq):
                IdentityFreeSequential.from_sequential(seq)
    return count


class IdentityFreeSequential(nn.Sequential):
    """An ``nn.Sequential`` that skips its ``nn.Identity`` children (same children, ``state_dict`` and indices).

    A folded BatchNorm and a fused activation each leave an ``Identity``
    behind: in the default model two per convolution, each a module call
    (~2 us) that does nothing. The list of children to run is rebuilt
    whenever the children change (however they are changed).
    """

    @classmethod
    def from_sequential(cls, seq: nn.Sequential) -> "IdentityFreeSequential":
        seq.__class__ = cls
        return seq  # type: ignore[return-value]

    def forward(self, x: Any) -> Any:
        children = tuple(self._modules.values())
        cached = self.__dict__.get("_running_for")
        if cached is None or cached[0] != children:
            cached = (children, tuple(m for m in children if m is not None and type(m) is not nn.Identity))
            self.__dict__["_running_for"] = cached
        for module in cached[1]:
            x = module(x)
        return x
