"""Shared fixtures: one random-weight VGG-19 per session and tiny images made in code."""

import sys
from dataclasses import dataclass

import pytest
import torch
from loguru import logger

from nst_batch.engine import Network, load_network

pytest_plugins = ["daemon_helpers"]  # its fixtures (daemon_factory) in every test module

SIZE = 24  # VGG-19 still has a 1x1 map at relu5_1; every iteration stays cheap on a CPU


@dataclass(frozen=True)
class TinyImages:
    """(1, 3, SIZE, SIZE) RGB images in [0, 1]."""

    gradient: torch.Tensor  # red rises left to right, green top to bottom, blue falls: colourful and smooth
    checkerboard: torch.Tensor  # black and white 4-pixel squares: grey, with hard edges
    noise: torch.Tensor  # coloured noise from a fixed generator: the usual "style"


def _gradient(size: int) -> torch.Tensor:
    ramp = torch.linspace(0, 1, size)
    red = ramp.view(1, size).expand(size, size)
    green = ramp.view(size, 1).expand(size, size)
    return torch.stack([red, green, 1 - red]).unsqueeze(0).contiguous()


def _checkerboard(size: int, square: int = 4) -> torch.Tensor:
    cells = torch.arange(size) // square
    board = ((cells.view(-1, 1) + cells.view(1, -1)) % 2).float()
    return board.expand(1, 3, size, size).contiguous()


def _noise(size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((1, 3, size, size), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def loguru_writes_to_the_current_stderr():
    """A test that sets logging up (the CLI does) binds loguru to the stderr pytest captured for
    that test, which is closed when the test ends; every later line would then fail to write."""
    yield
    logger.remove()
    logger.add(lambda line: sys.stderr.write(line), level="INFO", colorize=False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny images gain nothing from a second thread, and on a busy two-core machine two threads
    waiting on each other made the engine tests four times slower. Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def vgg19_random() -> Network:
    """The deterministic random-weight VGG-19, built once; the engine never modifies it."""
    network, _ = load_network("vgg19", "random")
    return network


@pytest.fixture
def tiny_images() -> TinyImages:
    """Fresh copies for every test, so a test that mutates one cannot affect another."""
    return TinyImages(gradient=_gradient(SIZE), checkerboard=_checkerboard(SIZE), noise=_noise(SIZE))


@pytest.fixture(autouse=True)
def torch_threads_kept():
    """A test that serves sets the process's CPU threads, as the daemon does; the next test gets
    the count back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
