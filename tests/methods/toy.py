"""A tiny model and a tiny learnable dataset, built in memory: every method's contract runs on them in seconds."""

from __future__ import annotations

import torch
from torch import nn

from ravn.data import Dataset, TensorSplit
from ravn.models import ModelRef

#: How a .ravn file rebuilds the toy model (tests put the repository root on sys.path).
REF = ModelRef("toy", "tests.methods.toy:tiny", {}, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 8)


class Tiny(nn.Module):
    def __init__(self, classes: int = 3, width: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8 * width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8 * width)
        self.conv2 = nn.Conv2d(8 * width, 8 * width, 3, padding=1, groups=2)
        self.fc = nn.Linear(8 * width, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


def tiny(width: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return Tiny(width=width).eval()


def bell(width: int = 2) -> nn.Module:
    """The tiny model with bell-shaped weights, as trained weights are: their codes' entropy is below their
    bits, so fine-tuning that spreads the weights raises it (entropy-coded budgets)."""
    model = tiny(width)
    with torch.no_grad():
        for layer in (model.conv1, model.conv2, model.fc):
            layer.weight.normal_(0, 0.1)
    return model


def dataset(n_train: int = 96, n_test: int = 24, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n_train + n_test,), generator=g)
    pixels = torch.randint(0, 100, (n_train + n_test, 3, 8, 8), generator=g, dtype=torch.uint8)
    for c in range(3):
        pixels[labels == c, c] += 120  # class c is brighter in channel c: learnable
    train = TensorSplit(pixels[:n_train], labels[:n_train])
    test = TensorSplit(pixels[n_train:], labels[n_train:])
    return Dataset("toy", None, ["r", "g", "b"], lambda: train, lambda: test, val_size=24)


class Attention(nn.Module):
    """A tiny vision Transformer: patches, one block of ``nn.MultiheadAttention`` (whose projections ravn
    rewrites into Linear layers, :mod:`ravn.models.attention`) and an MLP, a linear head."""

    def __init__(self, classes: int = 3, dim: int = 8):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        x = x + self.mlp(self.norm(x))
        return self.head(x.mean(1))


def attention() -> nn.Module:
    torch.manual_seed(0)
    return Attention().eval()


#: How a .ravn file rebuilds the attention model.
ATTENTION_REF = ModelRef("toy-attention", "tests.methods.toy:attention", {}, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 8)


class Up(nn.Module):
    """A tiny encoder-decoder classifier: a strided convolution down, transposed convolutions up (one
    grouped, one 1-D), a linear head: transposed convolutions keep their input channels in dim 0."""

    def __init__(self, classes: int = 3, width: int = 1, groups: int = 2):
        super().__init__()
        c = 4 * width
        self.down = nn.Conv2d(3, 2 * c, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2, groups=groups)
        self.up1d = nn.ConvTranspose1d(c, c, 3, padding=1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = torch.relu(self.up(torch.relu(self.down(x))))
        x = torch.relu(self.up1d(x.flatten(2)))
        return self.fc(x.mean(2))


def up(width: int = 1, groups: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return Up(width=width, groups=groups).eval()


#: How a .ravn file rebuilds the encoder-decoder model.
UP_REF = ModelRef("toy-up", "tests.methods.toy:up", {}, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 8)


def normed() -> nn.Module:
    """The tiny model with weights computed from other tensors, as audio models and GAN discriminators have them:
    ``conv1`` spectral-normalised and ``conv2`` weight-normalised as parametrizations, ``fc`` by the older
    hook-based ``weight_norm``."""
    import warnings

    model = tiny()
    model.conv1 = nn.utils.parametrizations.spectral_norm(model.conv1)
    model.conv2 = nn.utils.parametrizations.weight_norm(model.conv2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates the hook-based form; users still have it
        model.fc = nn.utils.weight_norm(model.fc)
    return model.eval()


#: How a .ravn file rebuilds the normalised model.
NORMED_REF = ModelRef("toy-normed", "tests.methods.toy:normed", {}, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 8)
