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
COMMAND_MODULES = (
    "run", "config", "ingest", "sql", "models", "serve", "status", "demo", "show", "report", "doctor",
)


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
        os.environ["GAE_DEBUG"] = "1"  # commands that run flows keep Prefect's tracebacks too
    try:
        code = app(standalone_mode=False)
    except Exception as exc:
        # Every failure is one line naming what broke and what to do; the trace is behind --debug.
        if debug:
            raise
        usage = getattr(exc, "format_message", None)
        if callable(usage) and isinstance(getattr(exc, "exit_code", None), int):  # click's usage errors
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            typer.secho(f"error: {' '.join(usage().split())}{hint}", err=True, fg=typer.colors.RED)
            raise SystemExit(exc.exit_code) from None
        from gae.errors import user_message

        typer.secho(f"error: {user_message(exc)}", err=True, fg=typer.colors.RED)
        raise SystemExit(1) from None
    if isinstance(code, int) and code:  # typer.Exit(code) and Ctrl-C (130) come back as a code
        raise SystemExit(code)


def one_line(exc: BaseException) -> str:
    """A user-facing error as one line (`gae.errors.one_line`)."""
    from gae.errors import one_line as _one_line

    return _one_line(exc)


if __name__ == "__main__":
    main()
