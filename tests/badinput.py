"""Fuzzed bad input (hypothesis strategies) and how the project answers it.

Shared by tests/test_fuzz.py (properties) and bench/reliability.py (counts). Each
`answer_*` function feeds one input to the real code and classifies the answer:

- "ok": the input was valid (only possible for config and space fuzzing);
- "clear": rejected with a ConfigError, or the CLI exited 2 with one `error:`/usage message,
  no traceback and no file written;
- anything else is a description of what went wrong (a crash, a traceback, a file written).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from engine.config import ConfigError, load_config

CONFIG_KEYS = [
    "epochs", "batch_size", "seed", "device", "data.suite", "data.known_classes",
    "data.val_fraction", "model.name", "model.width", "model.depth", "sparsity.method",
    "sparsity.density", "sparsity.drop_fraction", "moon.enabled", "moon.alpha_mode",
    "moon.alpha", "voting.mode", "voting.epochs", "optim.lr", "optim.schedule",
    "eval.scores", "eval.primary", "eval.dice_percentile",
]  # fmt: skip
SPACE = {
    "base": "default",
    "set": {"epochs": 3},
    "parameters": {"sparsity.density": {"distribution": "log_uniform", "low": 0.05, "high": 0.5}},
    "objectives": [{"metric": "val/auroc_near", "direction": "maximize"}],
    "constraints": [{"metric": "val/accuracy", "op": ">=", "baseline": "dense", "offset": -0.01}],
    "sampler": {"name": "random", "seed": 0},
    "seeds": [0],
    "budget": {"trials": 2, "max_concurrent": 1},
    "retry": {"attempts": 1, "on": ["oom"]},
}
METRICS = ["val/accuracy", "val/auroc_near", "val/ece", "density", "std/val/accuracy"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
yaml_text = st.one_of(st.text(max_size=80), values.map(lambda v: yaml.safe_dump(v)))


@st.composite
def config_overrides(draw: Any) -> list[str]:
    """`--set` lists: known or made-up keys, any value text, sometimes no `=`."""
    key = st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=15))
    value = st.one_of(st.text(max_size=15), scalars.map(str))
    item = st.one_of(st.tuples(key, value).map(lambda kv: f"{kv[0]}={kv[1]}"), st.text(max_size=20))
    return draw(st.lists(item, min_size=1, max_size=4))


def shipped_default() -> dict[str, Any]:
    """The shipped default space as its YAML holds it (conditions, baselines, constraints)."""
    from sweep.spaces import SPACE_DIR

    return yaml.safe_load((SPACE_DIR / "default.yaml").read_text())


@st.composite
def space_texts(draw: Any) -> str:
    """A valid space (the small test one, or the shipped default) with one to three entries
    replaced, removed or added; or any text."""
    if draw(st.integers(0, 4)) == 0:
        return draw(yaml_text)
    base = SPACE if draw(st.booleans()) else shipped_default()
    space = yaml.safe_load(yaml.safe_dump(base))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(space)))
        parent = space
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "remove" and isinstance(parent, dict):
            parent.pop(path[-1], None)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(values)
        else:
            parent[path[-1]] = draw(values)
    return yaml.safe_dump(space)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else []
    )
    for key, child in items:
        out += _paths(child, (*prefix, key))
    return out


def _bad_name() -> st.SearchStrategy[str]:
    allowed = set(string.ascii_letters + string.digits + "-_")
    return st.text(min_size=1, max_size=12).filter(lambda s: not set(s) <= allowed)


@st.composite
def cli_argvs(draw: Any) -> list[str]:
    """Command lines that are wrong in at least one way (so none starts real work)."""
    bad = draw(
        st.sampled_from(
            ["trials", "epochs", "concurrent", "cpus", "gpus", "name", "space", "option",
             "tracking", "storage", "set", "config", "resume", "status", "replay", "extra",
             "run_set", "few_epochs"]
        )
    )  # fmt: skip
    junk = st.text(max_size=10)
    nonpositive = st.integers(-(10**6), 0).map(str)
    if bad in ("trials", "epochs", "concurrent"):
        flag = {"trials": "--trials", "epochs": "--epochs", "concurrent": "--max-concurrent"}[bad]
        value = draw(st.one_of(nonpositive, junk.filter(lambda s: not s.strip().isdigit())))
        return ["run", flag, value]
    if bad == "cpus":
        return [
            "run",
            "--cpus-per-trial",
            draw(st.floats(max_value=0).map(str) | junk.filter(_not_number)),
        ]
    if bad == "gpus":
        frac = st.floats(0.01, 0.99).filter(lambda g: abs(1 / g - round(1 / g)) > 1e-3)
        return [
            "run",
            "--gpus-per-trial",
            str(draw(frac | st.floats(min_value=1.01, max_value=1e6))),
        ]
    if bad == "name":
        return ["run", "--name", draw(_bad_name())]
    if bad == "space":
        return [
            "run",
            "--space",
            "no-such-space-" + draw(st.text(string.ascii_lowercase, max_size=8)),
        ]
    if bad == "option":
        return ["run", "--zz-" + draw(st.text(string.ascii_lowercase, min_size=1, max_size=8)), "1"]
    if bad == "tracking":
        return [
            "run",
            "--tracking-uri",
            "zz" + draw(st.text(string.ascii_lowercase, max_size=6)) + "://x",
        ]
    if bad == "storage":
        return [
            "run",
            "--storage",
            "zz" + draw(st.text(string.ascii_lowercase, max_size=6)) + "://x/y",
        ]
    if bad == "run_set":  # on the shipped default space: a made-up key, a bad value, ...
        item = draw(
            st.one_of(
                st.text(string.ascii_lowercase + "._", min_size=1, max_size=12).map(
                    lambda k: f"zz{k}=1"
                ),
                st.tuples(  # "x...": never a number, a bool or a registered name
                    st.sampled_from(["model.width", "batch_size", "optim.lr", "data.suite"]),
                    st.text(string.ascii_letters + string.digits + " ,", max_size=8),
                ).map(lambda kv: f"{kv[0]}=x{kv[1]}"),
                st.sampled_from(["sparsity.density=0.1", "moon.enabled=false", "seed=1",
                                 "epochs=3", "model", "=1"]),
            )
        )  # fmt: skip
        return ["run", "--space", "default", "--set", item]
    if bad == "few_epochs":  # fewer than the default space's warm-up and voting allow
        return ["run", "--space", "default", "--epochs", "1"]
    if bad == "set":
        return ["train", "--set", "zz_" + draw(st.text(string.ascii_lowercase, max_size=8)) + "=1"]
    if bad == "config":
        return [
            "train",
            "--config",
            "no-such-preset-" + draw(st.text(string.ascii_lowercase, max_size=8)),
        ]
    if bad in ("resume", "status"):
        return [bad, draw(st.text(string.ascii_letters + "-_", min_size=1, max_size=12))]
    if bad == "replay":
        return ["replay", "nosweep", draw(junk)]
    return ["status", "x", "--" + draw(st.text(string.ascii_lowercase, min_size=1, max_size=6))]


def _not_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return True
    return False


constraint_exprs = st.one_of(
    st.text(max_size=30),
    st.tuples(
        st.sampled_from(["accuracy", "val/ece", "density", "auroc_near", "x", "", "test/accuracy"]),
        st.sampled_from([">=", "<=", ">", "<", "==", "=", "!=", "=>", ""]),
        st.one_of(st.floats().map(str), st.text(max_size=6)),
    ).map("".join),
)


# -- answers ---------------------------------------------------------------------------------


def answer_config(overrides: list[str]) -> str:
    try:
        load_config("default", overrides)
    except ConfigError:
        return "clear"
    except Exception as exc:  # anything but ConfigError is a crash
        return f"crash {type(exc).__name__}: {exc}"
    return "ok"


def answer_space(text: str, folder: Path) -> str:
    from sweep.spaces import load_space

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "space.yaml"
    path.write_text(text)
    try:
        load_space(path)
    except ConfigError:
        return "clear"
    except Exception as exc:
        return f"crash {type(exc).__name__}: {exc}"
    return "ok"


def answer_constraint(expr: str) -> str:
    from sweep.selection import parse_constraint

    try:
        parse_constraint(expr, METRICS)
    except ConfigError:
        return "clear"
    except Exception as exc:
        return f"crash {type(exc).__name__}: {exc}"
    return "ok"


def answer_cli(argv: list[str], workdir: Path) -> str:
    """Run the CLI in-process (its work directory and outputs under `workdir`)."""
    from typer.testing import CliRunner

    from sweep.cli import app

    if argv[0] == "run" and not {"--tracking-uri", "--storage"} & set(argv):
        # A safety net: should a drawn command line be valid after all, it stops at this
        # address (checked after the command line, space and name) instead of running a
        # sweep, and counts as a failure (the bad input was accepted). Not with a store URL:
        # the address is checked before the stores (and those URLs are never valid).
        argv = [*argv, "--workdir", str(workdir), "--address", "127.0.0.1:1"]
    elif argv[0] in ("run", "resume", "status", "replay"):
        argv = [*argv, "--workdir", str(workdir)]
    elif argv[0] == "train":
        argv = [*argv, "--out", str(workdir / "out")]
    result = CliRunner().invoke(app, argv)
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    written = [p for p in workdir.rglob("*") if p.is_file()] if workdir.exists() else []
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return f"crash {type(result.exception).__name__}: {result.exception}"
    if result.exit_code != 2:
        return f"exit {result.exit_code}: {text[-300:]}"
    if "Traceback" in text:
        return f"traceback: {text[-300:]}"
    if not ("error:" in text or "Error" in text):
        return f"no message: {text[-300:]}"
    if written:
        return f"wrote {written[:3]}"
    if "127.0.0.1:1" in text:
        return f"accepted (stopped only by the safety-net address): {text[-200:]}"
    return "clear"
