"""`gae demo`: the advantage engine on synthetic rollouts, with a quick benchmark."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        batch: int = typer.Option(256, help="Sequences (B)."),
        length: int = typer.Option(1024, help="Response positions (T)."),
        gamma: float = typer.Option(1.0, help="Discount."),
        lam: float = typer.Option(0.95, help="GAE lambda."),
        seed: int = typer.Option(0, help="Random seed."),
    ) -> None:
        """Compute GAE on synthetic multi-turn rollouts and time each backend against a memory copy."""
        from gae.demo import run_demo

        run_demo(batch=batch, length=length, gamma=gamma, lam=lam, seed=seed)
