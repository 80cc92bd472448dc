"""Fuzzed bad input (hypothesis): configs, search spaces, CLI arguments, constraint
expressions and store URLs. Bad input is always one clear error (ConfigError, or exit code
2 with a message), never a traceback, and nothing is written.
"""

from __future__ import annotations

import math
import shutil
import string
import tempfile
from pathlib import Path

from badinput import (
    METRICS,
    answer_cli,
    answer_config,
    answer_constraint,
    answer_space,
    cli_argvs,
    config_overrides,
    constraint_exprs,
    space_texts,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweep.stores import mask_url

FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@FAST
@given(config_overrides())
def test_config_overrides_are_valid_or_a_config_error(overrides: list[str]) -> None:
    assert answer_config(overrides) in ("ok", "clear")


@FAST
@given(space_texts())
def test_search_spaces_are_valid_or_a_config_error(text: str) -> None:
    folder = Path(tempfile.mkdtemp())
    try:
        assert answer_space(text, folder) in ("ok", "clear")
    finally:
        shutil.rmtree(folder)


@settings(max_examples=40, deadline=None, database=None)
@given(cli_argvs())
def test_bad_command_lines_exit_2_with_a_message_and_write_nothing(argv: list[str]) -> None:
    folder = Path(tempfile.mkdtemp())
    try:
        assert answer_cli(argv, folder / "w") == "clear", argv
    finally:
        shutil.rmtree(folder)


@settings(max_examples=200, deadline=None, database=None)
@given(constraint_exprs)
def test_constraint_expressions_parse_or_are_a_config_error(expr: str) -> None:
    assert answer_constraint(expr) in ("ok", "clear")


@settings(max_examples=100, deadline=None, database=None)
@given(
    st.sampled_from(["accuracy", "val/ece", "density", "auroc_near"]),
    st.sampled_from([">=", "<=", ">", "<"]),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
)
def test_well_formed_constraints_keep_their_value(metric: str, op: str, value: float) -> None:
    from sweep.selection import parse_constraint

    parsed = parse_constraint(f"{metric}{op}{value!r}", METRICS)
    assert parsed.op == op and math.isclose(parsed.value, value) or parsed.value == value
    assert parsed.metric in METRICS


secret = st.text(string.ascii_letters + string.digits + "!$%&*+,;=~-._:", min_size=4, max_size=20)


@settings(max_examples=200, database=None)
@given(
    st.sampled_from(["postgresql", "postgresql+psycopg2", "mysql", "http", "https", "redis"]),
    st.text(string.ascii_letters + string.digits + "._-", max_size=10),
    secret,
    st.sampled_from(["db.example.org:5432/optuna", "127.0.0.1/x", "host", "h:1/a/b?c=d"]),
)
def test_passwords_in_urls_are_masked(scheme: str, user: str, password: str, rest: str) -> None:
    url = f"{scheme}://{user}:{password}@{rest}"
    masked = mask_url(url)
    assert masked == f"{scheme}://{user}:***@{rest}"
    assert mask_url(f"moonsweep run --storage {url} --trials 3") == (
        f"moonsweep run --storage {masked} --trials 3"
    )
