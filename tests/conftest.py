import os

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Generated datasets are cached in the repository's ./datasets (git-ignored), also for the
# train_net.py subprocesses the tests start.
os.environ.setdefault("DETECTRON2_DATASETS", os.path.join(REPO_ROOT, "datasets"))


@pytest.fixture(scope="session")
def repo_root() -> str:
    return REPO_ROOT
