"""The ``ssl`` command line: thin commands that parse, build a config, call the API and print.

User errors (:class:`~ssl_toolkit.errors.UserError`) print one line on stderr and exit 2.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import click

from ssl_toolkit._version import __version__
from ssl_toolkit.errors import Interrupted, UserError, did_you_mean, one_line
from ssl_toolkit.ranks import is_primary_process

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


OPTION_OF_KEY: dict[str, str] = {}  # config keys this command line's options set -> those options, for the error line


def build_config(config_file: str | None, cli_values: dict[str, Any], overrides: tuple[str, ...]) -> dict[str, Any]:
    """Merge a YAML config, explicit CLI options (dotted keys) and ``--set`` overrides, in that order."""
    from ssl_toolkit.config import apply_overrides, load_yaml, set_dotted

    data = load_yaml(config_file) if config_file is not None else {}  # "" is an error, not "no config" (an unset $CFG)
    given = {key: value for key, value in cli_values.items() if value is not None}
    for key, value in given.items():
        set_dotted(data, key, value)
        if (option := _option_of(key)) is not None:
            OPTION_OF_KEY[key] = option
    refuse_twice_given(given, overrides)
    return apply_overrides(data, overrides)


def _option_of(key: str) -> str | None:
    """The current command's ``--option`` that sets config ``key`` (``trainer.batch_size``: ``--batch-size``,
    ``data.name``: ``--data``), when it has one."""
    ctx = click.get_current_context(silent=True)
    parts = key.split(".")
    name = parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]
    for param in ctx.command.params if ctx is not None else []:
        if isinstance(param, click.Option) and param.name == name:
            return next((o for o in param.opts if o.startswith("--")), None)
    return None


def named_by_option(message: str) -> str:
    """``config: trainer.batch_size: ...`` (or ``evaluator_config (knn): k: ...``) as ``--batch-size: ...``
    (``--k: ...``) when that option gave the value."""
    match = re.match(r"(config: |evaluator_config \(\w+\): )([\w.]+): (.*)", message, re.DOTALL)
    if match is None:
        return message
    key = ("evaluator_config." if match.group(1).startswith("evaluator") else "") + match.group(2)
    return f"{OPTION_OF_KEY[key]}: {match.group(3)}" if key in OPTION_OF_KEY else message


def one_config(ctx: click.Context, param: click.Parameter, files: tuple[str, ...]) -> str | None:
    """``--config`` taken once: a second file would silently replace the first (click keeps the last)."""
    if len(files) > 1:
        raise click.BadParameter(f"given {len(files)} times ({', '.join(files)}); give one file (--set adds to it)", ctx, param)
    return files[0] if files else None


def refuse_twice_given(given: dict[str, Any], overrides: tuple[str, ...]) -> None:
    """Refuse a ``--set KEY=VALUE`` whose key an option already set to another value (one of them would be ignored)."""
    from ssl_toolkit.config import apply_overrides, override_leaves

    for item in overrides:
        if "=" not in item:
            continue  # apply_overrides says what is wrong with it
        key = item.split("=", 1)[0].strip()
        value = apply_overrides({}, (f"v={item.split('=', 1)[1]}",))["v"]
        for leaf, leaf_value in override_leaves(key, value):  # --set trainer={epochs: 4} sets trainer.epochs
            if leaf in given and leaf_value != given[leaf]:
                raise UserError(
                    f"{leaf} is given twice, as {given[leaf]} by {_option_of(leaf) or 'its option'} and as {leaf_value} by --set; give it once"
                )


DATA_SETTINGS = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="data.KEY=VALUE",
    help="A data setting, e.g. --set data.limit=1000 (repeatable; docs/data.md).",
)  # with data_argument: the settings of `ssl embed` and `ssl report`


def data_argument(data: str | None, overrides: tuple[str, ...]) -> str | dict[str, Any] | None:
    """``--data NAME`` with ``--set data.KEY=VALUE`` (the only settings of ``ssl embed`` and ``ssl report``).

    Returns the name alone, a dict of data fields (``name`` absent without ``--data``: the
    fields then go on top of the data the backbone was pretrained on), or ``None``.
    """
    from ssl_toolkit.config import apply_overrides

    if not overrides:
        return data
    if data is not None:
        refuse_twice_given({"data.name": data}, overrides)
    fields = apply_overrides({}, overrides)
    other = sorted(set(fields) - {"data"})
    if other or not isinstance(fields.get("data"), dict):
        raise UserError(f"--set takes data.KEY=VALUE here, not {other[0] if other else 'data'}")
    return {**fields["data"], **({"name": data} if data is not None else {})}


def echo_rows(rows: list[tuple[str, object]], err: bool = False) -> None:
    """Print ``(label, value)`` rows as an aligned two-column table (on stderr with ``err``: stdout holds ``--json``)."""
    from ssl_toolkit.terminal import terminal_safe

    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(terminal_safe(f"{k:<{width}}  {v}"), err=err)


class LazyHelpOption(click.Option):
    """A click option whose help text is built when help is shown.

    Help that lists a registry's names (``--task``, ``--mode``) imports the registry's
    modules only then, so ``ssl --help`` and ``ssl tasks`` never pay for it.

    Args:
        help_text: Returns the help text.
    """

    def __init__(self, *args: Any, help_text: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help_text = help_text

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        self.help = self.help_text()
        return super().get_help_record(ctx)


def field_range(model: Any, key: str) -> str:
    """The bounds a config field enforces, as help shows them: ``8 to 1,024``, ``>= 2``, ``> 0, <= 1``.

    Read from the field itself, so the help and the check cannot disagree.
    """
    import annotated_types as at

    def number(x: Any) -> str:
        return f"{x:,}" if isinstance(x, int) else f"{x:g}"

    parts = key.split(".")
    for part in parts[:-1]:
        model = model.model_fields[part].annotation
    ge = gt = le = None
    for m in model.model_fields[parts[-1]].metadata:
        ge = m.ge if isinstance(m, at.Ge) else ge
        gt = m.gt if isinstance(m, at.Gt) else gt
        le = m.le if isinstance(m, at.Le) else le
    if ge is not None and le is not None:
        return f"{number(ge)} to {number(le)}"
    bounds = [f">= {number(ge)}"] if ge is not None else [f"> {number(gt)}"] if gt is not None else []
    return ", ".join(bounds + ([f"<= {number(le)}"] if le is not None else []))


def ranged_option(*decls: str, model: str, key: str, text: str, default: str, **kwargs: Any) -> Callable[[Any], Any]:
    """A click option whose help gives the bounds of config field ``key`` of ``model`` (``"module:Class"``).

    The help reads ``TEXT, BOUNDS. [default: DEFAULT]``; the model is imported only when help is shown.
    """

    def help_text() -> str:
        module, name = model.split(":")
        return f"{text}, {field_range(getattr(importlib.import_module(module), name), key)}. [default: {default}]"

    return click.option(*decls, cls=LazyHelpOption, help_text=help_text, **kwargs)


def quiet_libraries() -> None:
    """Keep third-party chatter (tips, banners) out of the user's terminal."""
    import logging
    import warnings

    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="ssl-toolkit")
def main() -> None:
    """ssl-toolkit: self-supervised pretraining of timm backbones, evaluation and analysis.

    \b
    Typical flow:
      ssl pretrain --task rotation --data digits --epochs 2 --out runs/rot
      ssl probe runs/rot --data digits
    """


def _register_commands() -> None:
    """Import every module of :mod:`ssl_toolkit.commands`; each adds its command to :data:`main`."""
    from ssl_toolkit.plugins import import_submodules

    import_submodules("ssl_toolkit.commands")


class FiniteFloat(click.ParamType):
    """A float option that refuses ``inf`` and ``nan`` (click's ``float`` accepts them)."""

    name = "float"

    def __init__(self, low: float | None = None, high: float | None = None) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        import math

        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            self.fail(
                f"{number:g} is not in the range {self.low:g} to {self.high:g}"
                if self.low is not None and self.high is not None
                else f"{number:g} is below {self.low:g}"
                if self.low is not None
                else f"{number:g} is above {self.high:g}",
                param,
                ctx,
            )
        return number


FINITE = FiniteFloat()
POSITIVE = click.IntRange(min=1)


SAME_OPTION = {  # options that choose the same thing under each command's own name: where to run
    "--device": ("--accelerator", "cpu, gpu or auto, as Lightning names them"),
    "--accelerator": ("--device", "cpu, cuda or cuda:N, as torch names them"),
}


def _one_line(e: click.ClickException) -> str:
    """A usage error as one line, with where to find help (click's own did-you-mean kept)."""
    message = one_line(e.format_message())
    param = getattr(e, "param", None)
    wrong = re.match(r"'(.*)' is not one of ", str(getattr(e, "message", "")))
    if param is not None and isinstance(param.type, click.Choice) and wrong:  # one of a few words: the nearest
        message += did_you_mean(wrong[1], [str(c) for c in param.type.choices])
    ctx = getattr(e, "ctx", None)
    where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    if isinstance(e, click.NoSuchOption) and ctx is not None and e.option_name in SAME_OPTION:
        other, values = SAME_OPTION[e.option_name]
        if any(other in getattr(p, "opts", ()) for p in ctx.command.params):
            where = f" ('{ctx.command_path}' takes {other}: {values})"
    return f"error: {message}{where}"


def _said_how_it_ended(code: int) -> None:
    """Tell a multi-process run's watch of its processes that this command says how it ended (:mod:`ssl_toolkit.launcher`)."""
    launcher = sys.modules.get("ssl_toolkit.launcher")  # imported by a run that trains, and only then
    if launcher is not None:
        launcher.command_ended(code)


def run() -> None:
    """Console-script entry point: user errors become one line on stderr and exit code 2.

    Usage errors (unknown command or option, a bad value) and operating-system errors met
    while reading or writing (a full disk, a read-only folder) are one line too.
    """
    OPTION_OF_KEY.clear()  # a command's own options only (tests run several in one process)
    try:
        from ssl_toolkit.api import command_line

        _register_commands()
        with command_line():
            rc = main.main(prog_name="ssl", standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except UserError as e:
        click.echo(f"error: {named_by_option(str(e))}", err=True)
        sys.exit(UserError.exit_code)
    except click.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError" and e.ctx is not None:  # `ssl` or `ssl checkpoints` alone: the help, as --help
            click.echo(e.ctx.get_help())
            sys.exit(0)
        click.echo(_one_line(e), err=True)
        sys.exit(2)
    except OSError as e:
        from ssl_toolkit.outputs import describe_os_error

        click.echo(f"error: {describe_os_error(e)}", err=True)
        sys.exit(UserError.exit_code)
    except Interrupted as e:
        # A DDP worker stopped with its run: the launching process saves and reports, and
        # Lightning would kill it (SIGKILL, mid-save) on seeing a worker exit non-zero.
        if not is_primary_process():
            sys.exit(0)
        click.echo(str(e), err=True)
        _said_how_it_ended(e.exit_code)
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt) as e:
        # exit 130 in a DDP worker too: before training starts, its non-zero exit is what ends
        # a launching process blocked in DDP's rendezvous (it waits 30 minutes otherwise)
        if is_primary_process():  # the launching process speaks for the run
            ctrl_c = not isinstance(e, click.exceptions.Abort) or isinstance(e.__cause__, KeyboardInterrupt)  # click's Abort wraps a Ctrl-C
            click.echo("interrupted" if ctrl_c else "aborted", err=True)
        _said_how_it_ended(130)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
