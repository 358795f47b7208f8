"""The docstring examples of the parsing and rendering modules are real: they run."""

from __future__ import annotations

import doctest

import pytest

from natfleet import agent, aggregate, answer, api, limits, render, targets, text
from natfleet.commands import report

MODULES = [aggregate, agent, answer, api, limits, render, report, targets, text]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
