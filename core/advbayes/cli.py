"""The advbayes command line: run, show, list and plugins; plugins add more (tracking: ui, compare, runs, report)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import click
import tomli_w

from advbayes.cli_options import complete_entries, debug_option, registry_option, tracking_option
from advbayes.cli_output import (
    exit_now,
    exit_status,
    interruption_lines,
    one_line,
    show_warning,
    stop_on_sigterm,
)
from advbayes.errors import AdvbayesError, RunError, error_text

KIND_CHOICES = ("datasets", "models", "defenses", "attacks", "metrics", "experiments")


class AdvbayesGroup(click.Group):
    """A click group that reports advbayes errors as one line with exit status 2 (a traceback with --debug), and
    adds the commands plugins register (register_commands) the first time a command is not a core one."""

    _commands_of: object = None  # the plugin manager whose commands were added

    def add_plugin_commands(self) -> None:
        """Let every plugin add its commands (once per plugin manager)."""
        from advbayes.plugins import get_plugin_manager

        pm = get_plugin_manager()
        if self._commands_of is not pm:
            self._commands_of = pm
            pm.hook.register_commands(cli=self)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            self.add_plugin_commands()
            command = super().get_command(ctx, cmd_name)
        return command

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.add_plugin_commands()
        return super().list_commands(ctx)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """click's main, with a usage error as one `Error:` line naming the command's --help (click prints the
        usage block, a hint and the error on three)."""
        run_click: Any = super().main  # typed by click as never returning, which holds only in standalone mode
        given = kwargs.get("args", args[0] if args else None)
        self.invoked_args = list(given) if given is not None else sys.argv[1:]  # for "run it again: ..." messages
        if not standalone_mode:
            return run_click(*args, standalone_mode=False, **kwargs)
        try:
            result = run_click(*args, standalone_mode=False, **kwargs)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "advbayes"
            click.echo(f"Error: {one_line(exc.format_message())} (see {where} --help)", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"Error: {one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)  # ctx.exit(code) comes back as the code

    def invoke(self, ctx: click.Context) -> Any:
        warnings.showwarning = show_warning
        # MLflow prints a "View run ... at: URL" line to stdout for every run closed on a server store: it would
        # break the results table and the sweep summary that scripts read.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        # A tracking server that answers its health check and then hangs: MLflow's defaults (120 s per request,
        # 7 retries with growing pauses) would wait a quarter of an hour; these bound it to about 90 s.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(HTTP_TIMEOUT))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(HTTP_RETRIES))
        if not _debug(ctx):  # every failure is one `Error:` line: MLflow's log lines and download bars would add more
            os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "CRITICAL")
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            logging.getLogger("mlflow").setLevel(logging.CRITICAL)
        try:
            return super().invoke(ctx)
        except AdvbayesError as exc:
            if _debug(ctx):
                raise
            click.echo(f"Error: {one_line(str(exc))}", err=True)
            ctx.exit(exc.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.Abort, BrokenPipeError):
            raise
        except Exception as exc:  # MLflow, Ray or a plugin failing in a command: reported, in one line, not hidden
            if _debug(ctx):
                raise
            click.echo(f"Error: {one_line(error_text(exc))} (again with --debug for the traceback)", err=True)
            ctx.exit(1)
        except KeyboardInterrupt as exc:
            finished = getattr(exc, "advbayes_records", None)
            if finished:  # the attacks that finished before the interruption
                from advbayes.results import format_table, metric_names

                for metric in metric_names(finished):
                    click.echo(format_table(finished, metric) + "\n")
            for line in interruption_lines(exc, list(getattr(self, "invoked_args", sys.argv[1:]))):
                click.echo(line, err=True)
            ctx.exit(exit_status(exc))


HTTP_TIMEOUT = 30  # seconds without a byte from a tracking server before a request fails
HTTP_RETRIES = 2


def _debug(ctx: click.Context) -> bool:
    return bool((ctx.obj or {}).get("debug")) or "--debug" in sys.argv


@click.group(cls=AdvbayesGroup)
@click.version_option(package_name="advbayes")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """A registry of adversarial defenses and attacks for stochastic and Bayesian neural networks."""
    ctx.obj = {"debug": debug}


@cli.command("run")
@click.argument("experiment", required=False, shell_complete=complete_entries(["experiments"], qualified=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key (dotted, TOML value).")
@registry_option
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@tracking_option
@click.option("--no-track", is_flag=True, help="Run without MLflow tracking.")
@click.option("--resume", "resume", default=None, metavar="RUN_ID", help="Continue a tracked run from its checkpoint.")
@click.option("--dry-run", is_flag=True, help="Check everything a run checks, print what would run, run nothing.")
@click.option("--nproc", type=int, default=None, help="Train on N processes with DistributedDataParallel (torchrun).")
@debug_option
def run_command(
    experiment: str | None,
    overrides: Sequence[str],
    registry_files: Sequence[str],
    device: str,
    tracking_uri: str | None,
    no_track: bool,
    resume: str | None,
    dry_run: bool,
    nproc: int | None,
    debug: bool,
) -> None:
    """Train and attack the experiment EXPERIMENT; print the results table."""
    from advbayes.engine import prepare_run, run
    from advbayes.engine.distributed import launched_world
    from advbayes.registry import parse_override
    from advbayes.results import RunGroup

    settings: dict[str, Any] = {
        "registry": registry_files,
        "device": device,
        "tracking_uri": tracking_uri,
        "track": not no_track,
        "resume": resume,
        "overrides": [parse_override(text) for text in overrides],
    }
    if nproc is not None and nproc < 1:
        raise RunError(f"--nproc: expected a number of processes >= 1, got {nproc}")
    if dry_run:
        click.echo(format_plan(prepare_run(experiment, **settings), tracking_uri, track=not no_track))
        return
    if nproc is not None and nproc > 1 and launched_world() == 1:
        prepare_run(experiment, **settings)  # every check before any process starts
        _check_gpus_for(nproc, device)
        args = ["run", *([experiment] if experiment else []), "--device", device]
        args += [f"--set={o}" for o in overrides] + [f"--registry={r}" for r in registry_files]
        args += [f"--tracking-uri={tracking_uri}"] if tracking_uri else []
        args += ["--no-track"] if no_track else []
        args += [f"--resume={resume}"] if resume else []
        args += ["--debug"] if debug else []
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        sys.exit(subprocess.call([*launcher, "-m", "advbayes.cli", *args]))
    try:
        result = run(experiment, progress=True, **settings)  # a bar on a terminal, else a line every 30 s
    except AdvbayesError:
        raise
    except Exception as exc:  # the hooks have marked the tracked run FAILED; report it in one line
        if debug or "--debug" in sys.argv:
            raise
        raise RunError(f"run failed: {error_text(exc)} (again with --debug for the traceback)") from exc
    if os.environ.get("RANK", "0") != "0":  # a distributed run: rank 0 alone prints
        return
    click.echo(result.format())
    results = result.results if isinstance(result, RunGroup) else [result]
    tracked = [r for r in results if r.run_id]
    if tracked:
        from advbayes.tracking.store import shown_uri

        ids = ", ".join(r.run_id for r in tracked if r.run_id)
        click.echo(f"\nMLflow run {ids} ({shown_uri(tracked[0].store or '')}); see it with: advbayes ui")


@cli.command("sweep")
@click.argument("name", required=False, shell_complete=complete_entries(["experiments"], qualified=False))
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2", help="A grid axis: a dotted key and its values.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key in every run.")
@registry_option
@click.option("--workers", type=int, default=None, help="Runs side by side on the local Ray (default: its CPUs).")
@click.option("--address", default=None, help="Join a Ray cluster: ray://HOST:PORT, HOST:PORT or auto.")
@click.option(
    "--gpus-per-run", type=float, default=None, help="GPUs each run reserves (default 1 if the cluster has any)."
)
@click.option("--cpus-per-run", type=float, default=1.0, show_default=True, help="CPUs each run reserves.")
@click.option("--device", default="auto", show_default=True, help="auto (a reserved GPU, else cpu), cpu or cuda.")
@tracking_option
@click.option("--resume", "resume", default=None, metavar="SWEEP_ID", help="Finish a sweep (stopped runs go on).")
@click.option("--dry-run", is_flag=True, help="Check every combination, print them, run nothing.")
@debug_option
def sweep_command(
    name: str | None,
    grid: Sequence[str],
    overrides: Sequence[str],
    registry_files: Sequence[str],
    workers: int | None,
    address: str | None,
    gpus_per_run: float | None,
    cpus_per_run: float,
    device: str,
    tracking_uri: str | None,
    resume: str | None,
    dry_run: bool,
    debug: bool,
) -> None:
    """Run experiment (or [sweeps.NAME]) NAME over a grid, each combination a Ray task; runs tagged by sweep id."""
    from advbayes.engine import prepare_run
    from advbayes.plugins import get_plugin_manager
    from advbayes.registry import load_registry, parse_override
    from advbayes.sweep import SweepError, parse_grid_option, plan_sweep

    if "advbayes.tracking" not in get_plugin_manager().info:
        raise RunError("advbayes sweep tracks every run to MLflow; enable the advbayes.tracking plugin")
    from advbayes.sweep.runner import execute, find_record
    from advbayes.tracking import client_for, default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    registry = load_registry(registry_files)
    try:
        if resume is not None:
            if name or grid or overrides:
                raise SweepError("--resume SWEEP_ID reruns the sweep as it was planned; give no NAME, --grid or --set")
            plan = find_record(client_for(uri, write=False), resume)
        else:
            if name is None:
                raise SweepError("name an experiment or a [sweeps.NAME] entry (advbayes list experiments)")
            plan = plan_sweep(
                registry, name, [parse_grid_option(g) for g in grid], [parse_override(o) for o in overrides]
            )

        def check(combination: Any, on: str) -> None:
            try:
                prepare_run(
                    plan.experiment, spec=combination.spec, device=on, tracking_uri=uri, registry=registry_files
                )
            except AdvbayesError as exc:
                raise SweepError(f"{combination.label}: {exc}") from None

        if dry_run:
            for combination in plan.combinations:
                check(combination, "cpu" if device == "auto" else device)
            click.echo(f"sweep of {plan.experiment}: {len(plan.combinations)} combination(s), each checked")
            for index, combination in enumerate(plan.combinations, 1):
                click.echo(f"  {index}. {combination.label} ({combination.runs} run(s))")
            click.echo("nothing was run (--dry-run)")
            return
        summary = execute(
            plan,
            tracking_uri=uri,
            address=address,
            workers=workers,
            gpus_per_run=gpus_per_run,
            cpus_per_run=cpus_per_run,
            device=device,
            check=check,
            resume=resume is not None,
        )
    except SweepError as exc:
        if debug or exc.lines == [str(exc)]:
            raise
        click.echo(f"Error: {one_line(str(exc))}", err=True)
        for line in exc.lines:
            click.echo(f"  {one_line(line)}", err=True)
        sys.exit(2)
    click.echo(summary.format())
    if summary.failed:
        sys.exit(1)


def _check_gpus_for(nproc: int, device: str) -> None:
    """--nproc on CUDA: one GPU per process."""
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        count = torch.cuda.device_count()
        if nproc > count:
            raise RunError(f"--nproc {nproc}: this machine has {count} CUDA device(s); one process per GPU")


def format_plan(prepared: Any, tracking_uri: str | None, *, track: bool) -> str:
    """What a run would do, one line per training run, after every pre-run check passed."""
    from advbayes.plugins import get_plugin_manager

    lines = [f"experiment {prepared.name} on {prepared.device}: {len(prepared.variants)} run(s), each checked"]
    if prepared.resume or prepared.resumed_from:
        lines[0] += f" (continuing from tracked run {prepared.resume or prepared.resumed_from})"
    for index, spec in enumerate(prepared.variants, 1):
        attacks = ", ".join(a["name"] for a in spec["attacks"])
        eps = ", ".join(f"{e:g}" for e in spec["eps"])
        epochs = f"until converged, at most {spec['epochs']}" if spec.get("until_converged") else str(spec["epochs"])
        lines.append(
            f"  {index}. defense {spec['defense']['name']}, model {spec['model']['name']}, data "
            f"{spec['dataset']['name']}, seed {spec['seed']}, {epochs} epochs x batch {spec['batch_size']}"
        )
        lines.append(f"     attacks {attacks} at eps {eps}; metrics {', '.join(m['name'] for m in spec['metrics'])}")
    if not track:
        lines.append("tracking: off (--no-track)")
    elif "advbayes.tracking" not in get_plugin_manager().info:
        lines.append("tracking: off (the advbayes.tracking plugin is disabled)")
    else:
        from advbayes.tracking import describe_store

        lines.append(f"tracking: {describe_store(tracking_uri)}")
    lines.append("nothing was run (--dry-run)")
    return "\n".join(lines)


@cli.command("show")
@click.argument("entry", shell_complete=complete_entries(KIND_CHOICES, qualified=True))
@registry_option
@debug_option
def show_command(entry: str, registry_files: Sequence[str], debug: bool) -> None:
    """Print the fully resolved ENTRY (name or kind.name) as TOML, then every parameter of its component with its
    type, default or "required", and help."""
    from advbayes.experiment import Experiment
    from advbayes.params import parameter_help
    from advbayes.registry import load_registry

    registry = load_registry(registry_files)
    kind, name = registry.locate(entry)
    raw = registry.find(kind, name)
    where = (raw.file if raw else "registry", f"{kind}.{name}", "")
    if kind == "experiments":
        resolved = registry.resolve_experiment(name)
        if resolved.get("eps"):  # the experiment's eps list replaces every attack's own eps: do not show those
            resolved["attacks"] = [{k: v for k, v in a.items() if k != "eps"} for a in resolved["attacks"]]
        component: type = Experiment
        title = "experiment keys (an attack's own eps is replaced by this eps list when it is not empty)"
    else:
        resolved = registry.resolve(kind, name, where=where)
        component = registry.component_class(kind, resolved["use"], file=where[0], entry=where[1])
        title = f"parameters of {kind[:-1]} component '{resolved['use']}'"
    click.echo(tomli_w.dumps({kind: {name: resolved}}).rstrip())
    click.echo(f"\n# {title}:")  # TOML comments: the output stays a valid registry file
    click.echo("\n".join(f"#   {line}" for line in parameter_help(component)))


@cli.command("list")
@click.argument("kind", required=False, type=click.Choice(KIND_CHOICES))
@registry_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@debug_option
def list_command(kind: str | None, registry_files: Sequence[str], as_json: bool, debug: bool) -> None:
    """List registry entries and registered components (of one KIND, or all)."""
    from advbayes.registry import load_registry

    registry = load_registry(registry_files)
    kinds = [kind] if kind else list(KIND_CHOICES)
    listing = {k: _kind_listing(registry, k) for k in kinds}
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    for k in kinds:
        click.echo(f"{k}:")
        for item in listing[k]["entries"]:
            status = "" if item["available"] else f"  [unavailable: {item['unavailable']}]"
            use = f" (use {item['use']})" if item.get("use") and item["use"] != item["name"] else ""
            text = f"  {item['name']}{use}"
            if item.get("description"):
                text += f"  {item['description']}"
            click.echo(f"{text}  [{item['file']}]{status}")
        if k != "experiments":
            names = ", ".join(f"{c['name']}" for c in listing[k]["components"])
            click.echo(f"  components: {names or 'none'}")
        click.echo("")


def _kind_listing(registry: Any, kind: str) -> dict[str, Any]:
    entries = []
    for name in registry.names(kind):
        raw = registry.find(kind, name)
        item: dict[str, Any] = {"name": name, "file": raw.file, "available": True}
        try:
            where = (raw.file, f"{kind}.{name}", "")
            resolved = registry.resolve(kind, name, where=where)
            item["use"] = resolved.get("use")
            if kind == "experiments":
                item["description"] = resolved.get("description", "")
        except AdvbayesError as exc:  # listed as unavailable, not fatal: `run` reports it when the entry is used
            item["available"] = False
            item["unavailable"] = str(exc)
        entries.append(item)
    components = []
    if kind != "experiments":
        for name in registry.pm.components.names(kind):
            registration = registry.pm.components.get(kind, name)
            components.append({"name": name, "plugin": registration.plugin, "summary": registration.cls.summary()})
    return {"entries": entries, "components": components}


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@debug_option
def plugins_command(as_json: bool, debug: bool) -> None:
    """List installed plugins: name, version, hooks and the components each registers."""
    from advbayes.plugins import get_plugin_manager

    pm = get_plugin_manager()
    index = pm.components
    plugins: list[dict[str, Any]] = [
        {
            "name": info.name,
            "distribution": info.distribution,
            "version": info.version,
            "builtin": info.builtin,
            "hooks": pm.hooks_of(info.name),
            "components": index.of_plugin(info.name),
        }
        for info in pm.info.values()
    ]
    failures = [{"name": f.name, "distribution": f.distribution, "error": f.error} for f in pm.failures]
    if as_json:
        click.echo(json.dumps({"plugins": plugins, "failed": failures}, indent=2))
        return
    for plugin in plugins:
        origin = "built-in" if plugin["builtin"] else plugin["distribution"]
        click.echo(f"{plugin['name']} {plugin['version']} ({origin})")
        click.echo(f"  hooks: {', '.join(plugin['hooks'])}")
        for kind, names in plugin["components"].items():
            click.echo(f"  {kind}: {', '.join(names)}")
    for failure in failures:
        click.echo(f"{failure['name']} ({failure['distribution']}) FAILED TO LOAD: {failure['error']}")


def main() -> None:
    """Console entry point; `list` and `show` answer from the output cache when nothing they read has changed."""
    stop_on_sigterm()
    try:
        _answer(sys.argv[1:])
    except SystemExit as exc:
        exit_now(exc.code)
    except BrokenPipeError:  # the reader went away (advbayes list | head): end quietly, with status 1 as click does
        exit_now(1)
    exit_now(0)


def _answer(args: list[str]) -> None:
    from advbayes import output_cache

    key = output_cache.cache_key(args)
    if key is None:
        cli(prog_name="advbayes")
        return
    kept = output_cache.read(key)
    if kept is not None:
        sys.stdout.write(kept)
        return
    with output_cache.recording(key):
        cli(prog_name="advbayes")


if __name__ == "__main__":
    main()
