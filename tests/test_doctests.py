"""The docstring examples of the parsing and rendering modules are real: they run."""

from __future__ import annotations

import doctest

import pytest

from natfleet import agent, render, targets, text


@pytest.mark.parametrize("module", [agent, render, targets, text], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
