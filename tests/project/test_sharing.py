"""How the tests are shared out among pytest-xdist's workers
(tests/conftest.py): a module that sets up once runs on one worker."""

from __future__ import annotations

from conftest import pytest_xdist_make_scheduler, sets_up_once


class Config:
    """What the scheduler reads of pytest's config."""

    def __init__(self, dist: str) -> None:
        self.values = {"dist": dist, "tx": ["4*popen"], "loadscopereorder": False}

    def getvalue(self, name: str) -> object:
        return self.values[name]


def test_modules_that_set_up_once_are_known_by_their_fixtures():
    assert sets_up_once("tests/project/test_release.py")  # the wheel
    assert sets_up_once("tests/project/test_apidocs.py")  # the API reference
    assert not sets_up_once("tests/core/test_codec.py")
    assert not sets_up_once("tests/no_such_test.py")


def test_under_loadgroup_such_a_module_is_one_unit_of_work():
    scheduler = pytest_xdist_make_scheduler(Config("loadgroup"), None)
    release = "tests/project/test_release.py"
    assert {
        scheduler._split_scope(f"{release}::test_twine_check_passes"),
        scheduler._split_scope(f"{release}::test_the_examples_run[wheel]"),
    } == {release}
    one = "tests/core/test_codec.py::test_empty_line_is_a_message"
    assert scheduler._split_scope(one) == one  # any other test goes alone
    assert scheduler._split_scope(f"{one}@chosen") == "chosen"  # xdist_group


def test_other_dist_modes_are_xdists_own():
    assert pytest_xdist_make_scheduler(Config("load"), None) is None
