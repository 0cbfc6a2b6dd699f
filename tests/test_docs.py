"""The examples in the docstrings run and print what they say."""

import doctest
import importlib
import pkgutil

import pytest

import saliencekit

# every module of the package, so that a new one cannot be forgotten
MODULES = ["saliencekit"] + [
    info.name for info in pkgutil.walk_packages(saliencekit.__path__, "saliencekit.")
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_every_explainer_cites_its_paper_and_has_an_example():
    import saliencekit.attributions as attributions

    for name in attributions.__all__:
        if name.endswith("Explainer"):
            continue
        doc = getattr(attributions, name).__doc__
        assert "arxiv.org" in doc or "doi.org" in doc, name
        assert ">>>" in doc or name in ("SquareGrad", "VarGrad"), name
