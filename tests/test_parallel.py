"""The XLA:CPU flag the CLI sets: added once, never over a user's choice, never on old jaxlibs."""

import os
from importlib import metadata

import pytest

from bit_medical import parallel

FLAG = "--xla_cpu_experimental_ynn_fusion_type="


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv("BIT_MEDICAL_KEEP_XLA_FLAGS", raising=False)
    monkeypatch.setattr(metadata, "version", lambda name: "0.10.2")
    return monkeypatch


def _flags_after(env, flags, **extra):
    if flags is None:
        env.delenv("XLA_FLAGS", raising=False)
    else:
        env.setenv("XLA_FLAGS", flags)
    for key, value in extra.items():
        env.setenv(key, value)
    parallel.tune_xla_cpu()
    return os.environ.get("XLA_FLAGS")


def test_flag_is_appended_to_the_users_flags(env):
    assert _flags_after(env, None) == FLAG
    assert _flags_after(env, "--xla_force_host_platform_device_count=8") == (
        f"--xla_force_host_platform_device_count=8 {FLAG}")


def test_a_users_own_setting_is_kept(env):
    mine = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
    assert _flags_after(env, mine) == mine
    assert _flags_after(env, "--foo=1", BIT_MEDICAL_KEEP_XLA_FLAGS="1") == "--foo=1"


def test_older_jaxlib_without_the_flag_is_left_alone(env):
    env.setattr(metadata, "version", lambda name: "0.9.1")
    assert _flags_after(env, None) is None
    assert _flags_after(env, "--foo=1") == "--foo=1"
