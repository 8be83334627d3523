"""`gae serve`: serve the deployments (nightly pipeline, on-demand ingest) to a Prefect API.

With PREFECT_API_URL unset it starts `prefect server start` on 127.0.0.1:PORT as a child
process, in a process group of its own, with PREFECT_API_URL and PREFECT_UI_API_URL of that
port (without them the UI calls port 4200: "Unable to connect to Prefect server"), and sets
PREFECT_UI_URL to that server's current UI (`/v2`) for itself and the flow runs it starts,
so the links Prefect prints open current pages, not the older UI's.

Stopping (Ctrl-C or SIGTERM): the runner stops first, pausing the deployments' schedules
through the API while the server still answers, then the child server; each step has a
deadline (about 5 s in all), and no traceback is printed. Prefect's own `serve()` does this
in the other order on Ctrl-C (the child server gets the terminal's SIGINT too and goes
first, so every pause call fails and retries) and hangs on SIGTERM (its handler waits on
the event loop it interrupted): issue 17.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer

RUNNER_STOP_S = 3.0  # the runner: cancel its loops, pause the schedules
SERVER_STOP_S = 3.0  # the child server after SIGTERM, before SIGKILL


def server_env(port: int, base: dict | None = None) -> dict[str, str]:
    """The environment of the child `prefect server start`: its API and the URL its UI calls."""
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ if base is None else base)
    env.update({"PREFECT_API_URL": api, "PREFECT_UI_API_URL": api})
    return env


def ui_url(port: int) -> str:
    """The Prefect 3.8 server's current UI; its start page alone redirects there, links do not."""
    return f"http://127.0.0.1:{port}/v2"


class LocalServer:
    """`prefect server start` on 127.0.0.1:`port` as a child in its own process group: the
    terminal's Ctrl-C reaches `gae serve` only, which stops the child after its runner."""

    def __init__(self, port: int, log_path: Path):
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self, timeout: float = 120.0) -> str:
        import urllib.request

        cmd = [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=server_env(self.port), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"prefect server exited with code {self.proc.returncode}; is port {self.port} free? "
                    f"(its log: {self.log_path})"
                )
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.api_url
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"prefect server on port {self.port} was not healthy within {timeout:.0f} s")

    def stop(self, timeout: float = SERVER_STOP_S) -> None:
        """SIGTERM to the server's process group; SIGKILL after `timeout` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


async def serve_until_signalled(deployments, *, on_ready=None) -> None:
    """Serve `deployments` with a Prefect Runner until SIGINT or SIGTERM, then stop it within
    RUNNER_STOP_S (the runner pauses their schedules on the way out)."""
    from prefect.runner import Runner

    runner = Runner(pause_on_shutdown=True)
    ids = [await runner.aadd_deployment(d) for d in deployments]
    stop = asyncio.Event()
    task = asyncio.create_task(runner.start(webserver=False))
    await asyncio.sleep(0)  # start() sets its own SIGTERM handler first thing; ours replace it
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # "ready" only once the runner is up: a stop right after it then finds a started runner
    while not runner.started and not task.done() and not stop.is_set():
        await asyncio.sleep(0.05)
    if on_ready is not None and runner.started and not stop.is_set():
        on_ready(ids)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        task.result()  # the runner ended on its own: raise what ended it
        return
    typer.echo("stopping: the runner, then the server ...", err=True)
    try:
        if runner.started:
            await asyncio.wait_for(runner.astop(), RUNNER_STOP_S)
        else:  # still starting: cancelling start() exits the runner's context (pausing the schedules)
            task.cancel()
        await asyncio.wait_for(task, RUNNER_STOP_S)
    except (asyncio.TimeoutError, asyncio.CancelledError, Exception) as exc:  # stopping: say it, go on
        task.cancel()
        if not isinstance(exc, asyncio.CancelledError):
            typer.echo(
                f"runner did not stop cleanly ({type(exc).__name__}: {exc}); stopping anyway", err=True
            )


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        cron: str = typer.Option("0 3 * * *", help="Schedule of rl-pipeline/nightly (cron, in UTC)."),
        config: Path | None = typer.Option(None, "--config", "-c", help="YAML config for the nightly run."),
        preset: str = typer.Option("default", help="Preset the nightly run starts from."),
        data_dir: Path | None = typer.Option(
            None, help="Data directory (default: GAE_DATA_DIR or ./gae-data)."
        ),
        port: int = typer.Option(
            4200, help="Port of the local Prefect server started when PREFECT_API_URL is unset."
        ),
    ) -> None:
        """Serve rl-pipeline/nightly (on a cron) and ingest-corpus/on-demand; runs start from the Prefect UI's Run button
        or `prefect deployment run 'rl-pipeline/nightly'`. Ctrl-C stops it."""
        from gae.config import load_config
        from gae.paths import DataDir

        cfg = load_config(
            preset=preset, path=config, values={"data_dir": str(data_dir) if data_dir else None}
        )
        # The served config names its data directory absolutely: runs started from the UI
        # then write where this command was pointed, wherever the runner starts them.
        dd = DataDir.resolve(cfg.data_dir)
        cfg = cfg.model_copy(update={"data_dir": str(dd.root)})
        server = None
        # Until the runner takes the signals over, SIGTERM stops startup like Ctrl-C does,
        # through the `finally` below: the server already started must not outlive us.
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            if not os.environ.get("PREFECT_API_URL"):
                server = LocalServer(port, dd.root / "prefect-server.log")
                os.environ["PREFECT_API_URL"] = server.start()
                os.environ.setdefault("PREFECT_UI_URL", ui_url(port))
            _serve(cfg, cron)
        except KeyboardInterrupt:
            typer.echo("interrupted while starting", err=True)
        finally:
            if server is not None:
                server.stop()
        typer.echo("stopped", err=True)
        # Everything is stopped and flushed; the interpreter's own teardown of the torch,
        # MLflow and Prefect modules imported here takes seconds on a busy machine, which
        # would put the stop past its deadline for nothing.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _serve(cfg, cron: str) -> None:
    from prefect.utilities.urls import url_for

    from flows.deployments import build_deployments

    deps = build_deployments(cron=cron, config=cfg.model_dump(mode="json"))

    def ready(ids) -> None:
        api = os.environ["PREFECT_API_URL"]
        ui = os.environ.get("PREFECT_UI_URL") or api.removesuffix("/api")
        typer.echo(f"Prefect UI: {ui}  (API {api})")
        for dep, dep_id in zip(deps, ids, strict=True):
            name = f"{dep.flow_name}/{dep.name}"
            when = f"cron {cron} (UTC)" if dep.name == "nightly" else "on demand"
            typer.echo(f"  {name:<26} {when:<24} {url_for('deployment', obj_id=dep_id) or ''}")
        typer.echo(
            "Start a run with a deployment's Run button, or: prefect deployment run 'rl-pipeline/nightly'"
        )
        typer.echo("Stop with Ctrl-C.")

    asyncio.run(serve_until_signalled(deps, on_ready=ready))
