"""The networks of the GPU benchmark (:mod:`benchmarks.gpu`): ResNet-18 for CIFAR-shaped images and a small GPT.

Written here rather than taken from torchvision (which may be absent, and whose ResNet-18 is the ImageNet one: a
7x7 stride-2 stem and a max-pool that shrink a 32x32 image to 8x8 before the first block), so that every machine
times the same network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GPT", "ResNet18", "TokenCrossEntropy"]


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, and the identity (or a strided 1x1 convolution) added back."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2015) in its CIFAR form: a 3x3 stride-1 stem without max-pool, four stages of two basic
    blocks (``width``, 2x, 4x, 8x channels; strides 1, 2, 2, 2), global average pooling, one linear layer.
    11.2 M parameters at ``width=64``.

    Shapes: ``[batch, 3, 32, 32] float32`` -> ``[batch, classes]`` logits.
    """

    def __init__(self, classes: int = 10, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        stages, channels = [], width
        for index, stride in enumerate((1, 2, 2, 2)):
            outputs = width * 2**index
            stages += [_BasicBlock(channels, outputs, stride), _BasicBlock(outputs, outputs, 1)]
            channels = outputs
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        features = self.stages(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))  # type: ignore[no-any-return]


class _Block(nn.Module):
    """A pre-norm transformer block: causal multi-head self-attention (``scaled_dot_product_attention``), then a
    4x GELU MLP, each added back to the residual stream."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape  # (B, T, C)
        q, k, v = self.qkv(self.ln1(x)).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, T, C / heads)
        x = x + self.proj(y.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.ln2(x))  # type: ignore[no-any-return]


class GPT(nn.Module):
    """A small GPT (minGPT's layout): token and learned position embeddings, ``layers`` pre-norm blocks, a final
    layer norm and an untied output projection.

    Shapes: ``[batch, T] int64`` token ids (``T <= length``) -> ``[batch, T, vocabulary]`` logits.
    """

    def __init__(self, vocabulary: int, length: int, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocabulary, width)
        self.positions = nn.Embedding(length, width)
        self.blocks = nn.Sequential(*(_Block(width, heads) for _ in range(layers)))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocabulary, bias=False)
        self.register_buffer("index", torch.arange(length), persistent=False)  # no arange per step

    def forward(self, ids: Tensor) -> Tensor:
        x = self.tokens(ids) + self.positions(self.index[: ids.shape[1]])
        return self.head(self.ln(self.blocks(x)))  # type: ignore[no-any-return]


class TokenCrossEntropy(nn.Module):
    """Cross-entropy of ``[batch, T, vocabulary]`` logits against ``[batch, T] int64`` next tokens, averaged over
    every token."""

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
