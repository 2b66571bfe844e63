"""Quiet-by-default logging of the user-facing Ray commands: the settings, without starting Ray."""

from __future__ import annotations

import logging

import pytest

from mtl_ray.cli import build_parser
from mtl_ray.ray.logs import VERBOSE_ENV, RayLogging, verbose_requested


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [(False, None, False), (True, None, True), (False, "1", True), (False, "0", False), (False, "false", False),
     (False, "yes", True), (False, "", False)],
)  # fmt: skip
def test_verbose_from_flag_or_env(monkeypatch, flag, env, expected):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    if env is not None:
        monkeypatch.setenv(VERBOSE_ENV, env)
    assert verbose_requested(flag) is expected


def test_quiet_settings_keep_serve_logs_in_files():
    assert RayLogging().init_kwargs() == {
        "logging_level": logging.WARNING,
        "log_to_driver": True,
        "runtime_env": {"env_vars": {"RAY_SERVE_LOG_TO_STDERR": "0"}},
    }
    assert RayLogging(worker_output=False).init_kwargs()["log_to_driver"] is False
    assert RayLogging().serve_logging_config() == {"log_level": "INFO", "enable_access_log": True}


def test_verbose_settings_are_rays_defaults(monkeypatch):
    assert RayLogging(verbose=True).init_kwargs() == {}
    for name in ("ray", "ray.serve"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.INFO)
    logger = logging.getLogger("ray.serve")
    RayLogging(verbose=True).apply_to_driver()
    assert logger.level == logging.INFO
    RayLogging().apply_to_driver()
    assert logger.level == logging.WARNING


@pytest.mark.parametrize("command", [["demo"], ["serve", "--checkpoint", "ck"]])
def test_demo_and_serve_take_verbose(command):
    assert build_parser().parse_args([*command, "--verbose"]).verbose is True
    assert build_parser().parse_args(command).verbose is False
