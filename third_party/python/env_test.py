"""The interpreter running the tests is the pinned one: `pip freeze` equals requirements.lock."""
import os
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import make_env  # noqa: E402

LOCK = pathlib.Path(__file__).resolve().parent / "requirements.lock"


def test_lock_pins_every_package_with_a_hash():
    lines = [l for l in LOCK.read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines
    for line in lines:
        assert "==" in line and "--hash=sha256:" in line, line


def test_freeze_equals_lock():
    if os.environ.get("VISIONSSM_PYTHON"):
        pytest.skip("VISIONSSM_PYTHON selects an interpreter that is not managed by the lock")
    make_env.check_freeze(sys.executable, LOCK.read_text())


def test_environment_is_keyed_by_the_lock():
    if os.environ.get("VISIONSSM_PYTHON"):
        pytest.skip("VISIONSSM_PYTHON selects an interpreter that is not managed by the lock")
    import hashlib
    key = hashlib.sha256(LOCK.read_text().encode()).hexdigest()[:16]
    assert pathlib.Path(sys.prefix).name == key, (sys.prefix, key)
