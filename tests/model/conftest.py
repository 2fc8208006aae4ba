"""Fixtures shared by the model tests: the tiny transformers reference and a jitted forward."""

import jax
import pytest

import model
from tests.model.mllama_reference import reference


@pytest.fixture(scope="session")
def ref():
    """(torch model, its directory, our config, our params loaded from there) for the tiny preset."""
    return reference("tiny")


@pytest.fixture(scope="session")
def jit_forward():
    return jax.jit(model.forward, static_argnums=1, static_argnames="return_values")
