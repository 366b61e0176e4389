"""OpenMP's idle spinning in the workers (shared.threads.calm_openmp)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shared import threads


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    return monkeypatch


def test_sets_the_spin_count_when_the_user_did_not(clean_env: pytest.MonkeyPatch) -> None:
    threads.calm_openmp()
    assert os.environ["GOMP_SPINCOUNT"] == threads.OPENMP_SPINCOUNT


@pytest.mark.parametrize("var", ["GOMP_SPINCOUNT", "OMP_WAIT_POLICY"])
def test_leaves_the_users_openmp_setting_alone(clean_env: pytest.MonkeyPatch, var: str) -> None:
    clean_env.setenv(var, "PASSIVE" if var == "OMP_WAIT_POLICY" else "300000")
    assert threads.calm_openmp() is False
    assert os.environ.get("GOMP_SPINCOUNT") == (None if var == "OMP_WAIT_POLICY" else "300000")


def test_too_late_once_torch_is_loaded(clean_env: pytest.MonkeyPatch) -> None:
    import torch  # noqa: F401 - libgomp has read its environment

    assert threads.calm_openmp() is False  # set for child processes, but not in effect here
    assert os.environ["GOMP_SPINCOUNT"] == threads.OPENMP_SPINCOUNT


def test_a_worker_process_sets_it_before_torch_loads() -> None:
    """``celery -A worker.celery_app`` imports the ``worker`` package first: the setting is in
    the environment before anything loads libgomp."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    code = ("import sys, os; import worker; "
            "print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules, 'faiss' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [threads.OPENMP_SPINCOUNT, "False", "False"]
