import pytest

from tests.labutil import apply_xdist_groups


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    # the lab schedule shares the lab tests' worker (see tests/labutil.py)
    apply_xdist_groups(config, items)
