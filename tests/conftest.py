import os

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Generated datasets are cached in the repository's ./datasets (git-ignored), also for the
# train_net.py subprocesses the tests start.
os.environ.setdefault("DETECTRON2_DATASETS", os.path.join(REPO_ROOT, "datasets"))


@pytest.fixture(scope="session")
def repo_root() -> str:
    return REPO_ROOT


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors and a shared 2-core machine: one torch thread for the module, then restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
