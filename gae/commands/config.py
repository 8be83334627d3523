"""`gae config`: the resolved, validated pipeline config, ready to edit and pass back with `-c`."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("config")
    def config(
        preset: str = typer.Option("default", help="smoke, default, vc_ppo or vapo."),
        config: Path | None = typer.Option(None, "--config", "-c", help="YAML file with config values."),
        set_: list[str] = typer.Option(
            [], "--set", help="Override one value: --set ppo.epochs=2 (repeatable)."
        ),
        as_json: bool = typer.Option(False, "--json", help="JSON instead of commented YAML."),
    ) -> None:
        """Print the config `gae run` would use (preset, then file, then --set), every field with
        its description: `gae config --preset smoke > run.yaml`, edit, `gae run -c run.yaml`."""
        import json

        from gae.config import load_config, to_yaml

        cfg = load_config(preset=preset, path=config, overrides=list(set_))  # errors: one line (gae.cli)
        typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2) if as_json else to_yaml(cfg), nl=False)
