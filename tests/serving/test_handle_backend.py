"""HandleBackend without a cluster: what a head call raises when the encoder died upstream."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import RayServeException

from mtl_ray.ray.serve.deployments import HandleBackend


class _Method:
    def __init__(self, exc: BaseException):
        self.exc = exc
        self.args: list = []

    def remote(self, *args):
        self.args.append(args)

        async def fail():
            raise self.exc

        return fail()


class _Handle:
    def __init__(self, exc: BaseException):
        self.predict = _Method(exc)


def _upstream_crash() -> RayServeException:
    wrapped = RayServeException("Request to deployment 'Head-x' failed because an upstream actor died")
    wrapped.__cause__ = ActorDiedError()
    return wrapped


def test_an_upstream_encoder_death_surfaces_as_the_actor_error_the_gateway_retries():
    head = _Handle(_upstream_crash())
    backend = HandleBackend(encoder=None, heads={"x": head})
    with pytest.raises(ActorDiedError):
        asyncio.run(backend.predict("x", "pending-encoder-response"))
    assert head.predict.args == [("pending-encoder-response",)]  # handed on as is: one hop
    assert backend.resolved == 0


def test_other_serve_errors_pass_through():
    backend = HandleBackend(encoder=None, heads={"x": _Handle(RayServeException("something else"))})
    with pytest.raises(RayServeException, match="something else"):
        asyncio.run(backend.predict("x", None))
