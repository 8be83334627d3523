"""`gae serve`: serve the deployments (nightly pipeline, on-demand ingest) to a Prefect API."""

from __future__ import annotations

from pathlib import Path

import typer


def _start_local_server(port: int) -> str:
    """Start `prefect server start` on 127.0.0.1 in the background and wait until healthy."""
    import subprocess
    import sys
    import time
    import urllib.request

    url = f"http://127.0.0.1:{port}/api"
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode}; is port {port} free?")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return url
        except OSError:
            time.sleep(1)
    proc.terminate()
    raise RuntimeError(f"prefect server on port {port} did not become healthy within 120 s")


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
        or `prefect deployment run 'rl-pipeline/nightly'`."""
        import os

        from gae.config import load_config

        if not os.environ.get("PREFECT_API_URL"):
            url = _start_local_server(port)
            os.environ["PREFECT_API_URL"] = url
            typer.echo(f"Prefect UI: http://127.0.0.1:{port}  (API {url})")
        cfg = load_config(
            preset=preset, path=config, overrides={"data_dir": str(data_dir)} if data_dir else None
        )
        from prefect import serve as prefect_serve

        from flows.deployments import build_deployments

        deps = build_deployments(cron=cron, config=cfg.model_dump(mode="json"))
        prefect_serve(*deps)
