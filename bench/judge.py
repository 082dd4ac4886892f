"""The benchmarks' quality judges for Fashion-MNIST: small classifiers whose hidden layers stand in for Inception.

FD-cls is the Frechet distance in the 128-dimensional hidden layer of `Classifier` (judge A: two
plain convolutions and a dense layer, trained on the whole training split); FD-res the same in the
128-dimensional global average pool of `ResidualClassifier` (judge B: residual blocks with
BatchNorm, no dense layer, trained on the second half of the split only). Two networks of other
architectures, trained on other images, see other features: a ranking that holds on both is not one
network's taste. Both are the FID recipe with a domain network, since Inception's weights cannot be
downloaded on the development machines, computed through pipeline.evaluate: uint8 images, float64
statistics, the same distance.
"""

import sys
from pathlib import Path

import numpy as np
import torch


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import metrics  # noqa: E402


class Classifier(torch.nn.Module):
    """Two conv layers and a 128-unit hidden layer; its hidden activations are the features."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(64 * 7 * 7, 128),
            torch.nn.ReLU(),
        )
        self.head = torch.nn.Linear(128, 10)

    def forward(self, images):
        return self.head(self.body(images))


class ResidualBlock(torch.nn.Module):
    """x + conv(relu(bn(conv(relu(bn(x)))))) (pre-activation, He et al. 2016)."""

    def __init__(self, channels: int):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.BatchNorm2d(channels),
            torch.nn.ReLU(),
            torch.nn.Conv2d(channels, channels, 3, padding=1),
            torch.nn.BatchNorm2d(channels),
            torch.nn.ReLU(),
            torch.nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x):
        return x + self.layers(x)


class ResidualClassifier(torch.nn.Module):
    """Judge B: 28 -> 14 -> 7 with a residual block at each size (16, 32, 64 channels; a 1x1 convolution to 128),
    features the 128-d global average pool."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1),
            ResidualBlock(16),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
            ResidualBlock(32),
            torch.nn.Conv2d(32, 64, 3, stride=2, padding=1),
            ResidualBlock(64),
            torch.nn.Conv2d(64, 128, 1),
            torch.nn.BatchNorm2d(128),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        self.head = torch.nn.Linear(128, 10)

    def forward(self, images):
        return self.head(self.body(images))


def train_classifier(
    pixels: np.ndarray, labels: np.ndarray, epochs: int = 4, seed: int = 0, network: torch.nn.Module = None
) -> torch.nn.Module:
    """Adam, batches of 128, seeded: (N, 28, 28, 1) uint8 images and their labels (`network`: a Classifier)."""
    torch.manual_seed(seed)
    inputs = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    targets = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    network = network or Classifier()
    network.train()
    optimizer = torch.optim.Adam(network.parameters(), lr=2e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(inputs)).split(128):
            loss = torch.nn.functional.cross_entropy(network(inputs[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return network.eval()


def accuracy(network: torch.nn.Module, pixels: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        predicted = network(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255).argmax(1).numpy()
    return float((predicted == np.asarray(labels)).mean())


def features(network: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """(N, 128) float64 hidden-layer features of uint8 (N, 28, 28, 1) images, in chunks of 1000."""
    metrics.check_images(images)
    with torch.no_grad():
        chunks = [
            network.body(batch.permute(0, 3, 1, 2).float() / 255) for batch in torch.from_numpy(images).split(1000)
        ]
    return torch.cat(chunks).double().numpy()
