"""What a finished run prints: where things are and what to look at next."""

from __future__ import annotations


def print_run_summary(result: dict, cfg) -> None:
    from rich.console import Console
    from rich.table import Table

    from gae.paths import DataDir
    from gae.tracking import tracking_uri

    console = Console()
    dd = DataDir.resolve(cfg.data_dir)
    its = result.get("iterations") or []
    # A resumed run returns only the iterations it ran; the run state holds every completed one.
    from gae.runstate import RunState

    state = RunState.load(dd.runs, cfg.run_name) if dd.runs.exists() else None
    if state is not None and state.run_id == result.get("run_id") and state.history:
        its = sorted(state.history, key=lambda h: h.get("iteration", 0))
    table = Table(title=f"run {result['run_id']}")
    for col in ("iteration", "eval reward", "train score", "KL", "explained var", "seconds"):
        table.add_column(col, justify="right")
    for i, m in enumerate(its):
        table.add_row(
            str(m.get("iteration", i)),
            f"{m.get('eval/reward/mean', float('nan')):.4f}",
            f"{m.get('critic/score/mean', float('nan')):.4f}",
            f"{m.get('actor/ppo_kl', float('nan')):.4f}",
            f"{m.get('critic/vf_explained_var', float('nan')):.3f}",
            f"{m.get('timing_s/iteration', float('nan')):.1f}",
        )
    console.print(table)
    base = result.get("base") or {}
    if base.get("eval_reward") is not None and its:
        console.print(
            f"eval reward: {base['eval_reward']:.4f} before PPO -> {its[-1].get('eval/reward/mean', float('nan')):.4f} after"
        )
    reg = result.get("registered")
    if reg:
        console.print(
            f"registered [bold]{reg.get('name')}[/bold] version {reg.get('version')} (aliases: {', '.join(reg.get('aliases', []))})"
        )
    uri = tracking_uri(dd)
    console.print(
        "\n[bold]Where to look[/bold]\n"
        f'  per-token data:  gae sql --data-dir {dd.root} "select token, advantage from tokens order by advantage desc limit 20"\n'
        f"  named queries:   gae query --list --data-dir {dd.root}\n"
        f"  MLflow UI:       mlflow ui --backend-store-uri {uri}\n"
        "  Prefect UI:      prefect server start   (then open http://127.0.0.1:4200)\n"
        f'  the policy:      gae generate --data-dir {dd.root} --model {cfg.registry.model_name}@champion "Once upon a time"\n'
    )
