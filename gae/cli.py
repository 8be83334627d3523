"""The `gae` command line.

`--help` must be instant, so this module imports only typer; each command imports
torch, duckdb, prefect or mlflow inside its body. Commands live in `gae/commands/`,
one module per group, each exposing `register(app)`.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

app = typer.Typer(
    name="gae",
    help="gaeflow: RL fine-tuning of language models with token-level GAE, per-token data in DuckDB/Parquet, "
    "policies in the MLflow registry.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Order is the order of `gae --help`.
COMMAND_MODULES = ("run", "config", "ingest", "sql", "models", "serve", "status", "demo", "show", "report")


def _register_all() -> None:
    for name in COMMAND_MODULES:
        modname = f"gae.commands.{name}"
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name == modname:  # a command group not built yet; anything else is a real error
                continue
            raise
        mod.register(app)


def main() -> None:
    _register_all()
    debug = "--debug" in sys.argv or os.environ.get("GAE_DEBUG") == "1"
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    try:
        app()
    except (ValueError, FileNotFoundError, PermissionError, RuntimeError) as exc:
        # User-facing errors are one clear line; the trace is behind --debug.
        if debug:
            raise
        typer.secho(f"error: {one_line(exc)}", err=True, fg=typer.colors.RED)
        raise SystemExit(1) from None


def one_line(exc: BaseException) -> str:
    """A user-facing error as one line; pydantic's multi-line reports become `field: problem; ...`."""
    errors = getattr(exc, "errors", None)
    if callable(errors) and type(exc).__name__ == "ValidationError":
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in errors()]
        return f"invalid {getattr(exc, 'title', 'config')}: " + "; ".join(parts)
    return " ".join(str(exc).split())


if __name__ == "__main__":
    main()
