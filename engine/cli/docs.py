"""Man pages and bash completion generated from the argument parser, so that they never drift from it.

``python -m tether.engine.cli.docs --write [DIR]`` writes ``man/tether*.1`` (one page per command, git-style:
``tether-bound-sync.1``) and ``completion/bash/tether`` under ``DIR`` (default: the repository's ``contrib/``);
``--check`` compares instead and exits 1 on any difference. The files are generated once and checked in, not
at build time: the RPM spec, a Containerfile and ``pip install`` then need no step that imports tether, and
``tests/test_docs.py`` regenerates them and fails when a flag was added without regenerating.

Everything comes from :func:`tether.engine.cli.parser.build_parser`: commands, their help and description,
option groups, flags, metavars, choices; an option's value is completed as a file when its type is a path, as
a directory when its metavar says ``DIR``, from its choices when it has some. Options hidden from ``--help``
stay hidden here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tether import __version__
from tether.engine.cli.parser import build_parser

#: Pages of the tools a reader of each command's page knows (by the command's first word).
SEE_ALSO = {
    "": ("podman(1)", "skopeo(1)", "bootc(8)", "containers-storage.conf(5)", "containers-registries.conf(5)",
         "containers-auth.json(5)", "containers-policy.json(5)"),
    "pull": ("podman-pull(1)", "containers-registries.conf(5)", "containers-auth.json(5)",
             "containers-policy.json(5)"),
    "inspect": ("skopeo-inspect(1)",),
    "images": ("podman-images(1)",),
    "rmi": ("podman-rmi(1)",),
    "check": ("podman-system-check(1)",),
    "bound": ("bootc(8)", "podman-systemd.unit(5)"),
    "mirror": ("skopeo-sync(1)", "containers-registries.conf(5)"),
}

ENVIRONMENT = (
    ("REGISTRY_AUTH_FILE", "the credentials file when --authfile is not given (as podman reads it)"),
    ("CONTAINERS_REGISTRIES_CONF", "registries.conf when --registries-conf is not given (as podman reads it)"),
)


@dataclass(frozen=True)
class Command:
    """One command of the tree: ``path`` is ``()`` for ``tether``, ``("bound", "sync")`` for ``tether bound sync``."""

    path: tuple[str, ...]
    parser: argparse.ArgumentParser
    summary: str

    @property
    def name(self) -> str:
        return " ".join(("tether", *self.path))

    @property
    def page(self) -> str:
        return "-".join(("tether", *self.path))

    def options(self) -> list[argparse.Action]:
        return [a for a in self.parser._actions if a.option_strings and a.help != argparse.SUPPRESS]

    def positionals(self) -> list[argparse.Action]:
        return [a for a in self.parser._actions if not a.option_strings and a.help != argparse.SUPPRESS
                and not isinstance(a, argparse._SubParsersAction)]

    def subcommands(self) -> dict[str, tuple[argparse.ArgumentParser, str]]:
        out: dict[str, tuple[argparse.ArgumentParser, str]] = {}
        for action in self.parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help or "" for a in action._choices_actions}
                for name, sub in action.choices.items():
                    out[name] = (sub, helps.get(name, ""))
        return out


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), summary: str = "") -> Iterator[Command]:
    """Every command of the tree, parents before their subcommands, in the parser's order."""
    command = Command(path, parser, summary or (parser.description or ""))
    yield command
    for name, (sub, help_text) in command.subcommands().items():
        yield from walk(sub, (*path, name), help_text)


def takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def metavar(action: argparse.Action) -> str:
    if action.choices is not None and action.metavar is None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    if isinstance(action.metavar, str):
        return action.metavar
    return action.dest.upper()


def value_kind(action: argparse.Action) -> str:
    """How a shell completes the option's value: ``choices``, ``dir``, ``file``, or ``none`` (free text)."""
    if action.choices is not None:
        return "choices"
    if isinstance(action.metavar, str) and "DIR" in action.metavar.split("|")[0]:
        return "dir"
    if action.type is Path:
        return "file"
    return "none"


# ---- man pages (man(7) macros only: groff and mandoc render them alike)


def _roff(text: str) -> str:
    """Prose for roff: backslashes escaped, no line starting with a control character."""
    lines = text.replace("\\", "\\e").splitlines() or [""]
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in lines)


def _opt(text: str) -> str:
    """An option or command name: ASCII minus signs (``\\-``), so that a copied option works."""
    return _roff(text).replace("-", "\\-")


def _option_item(action: argparse.Action) -> str:
    names = ", ".join(f"\\fB{_opt(s)}\\fR" for s in action.option_strings)
    if takes_value(action):
        value = f"\\fI{_opt(metavar(action))}\\fR"
        names += f"[=\\fI{_opt(metavar(action))}\\fR]" if action.nargs == "?" else f" {value}"
    help_text = (action.help or "").replace("%(default)s", str(action.default)).replace("%%", "%")
    if action.required:
        help_text += " (required)"
    return f".TP\n{names}\n{_roff(help_text)}\n"


def man_page(command: Command) -> str:
    """The man(7) source of one command's page."""
    title = command.page.upper()
    out = [
        ".\\\" Generated by python -m tether.engine.cli.docs from tether's argument parser; do not edit.\n",
        f'.TH "{_opt(title)}" "1" "" "tether {__version__}" "tether manual"\n',
        ".nh\n",  # option names and paths are not to be hyphenated
        ".SH NAME\n",
        f"{_opt(command.page)} \\- {_roff(command.summary.rstrip('.'))}\n",
        ".SH SYNOPSIS\n",
    ]
    subs = command.subcommands()
    synopsis = f"\\fB{_opt(command.name)}\\fR"
    if command.options():
        synopsis += " [\\fIOPTION\\fR]..."
    if subs:
        synopsis += " \\fICOMMAND\\fR ..."
    for action in command.positionals():
        word = f"\\fI{_opt(metavar(action))}\\fR"
        if action.nargs == "+":
            word += "..."
        elif action.nargs == "*":
            word = f"[{word}...]"
        elif action.nargs == "?":
            word = f"[{word}]"
        synopsis += " " + word
    out.append(synopsis + "\n")
    if command.parser.description:
        out.append(f".SH DESCRIPTION\n{_roff(command.parser.description)}\n")
    if subs:
        out.append(".SH COMMANDS\n")
        for name, (_, help_text) in subs.items():
            page = "-".join((command.page, name))
            out.append(f".TP\n\\fB{_opt(name)}\\fR\n{_roff(help_text)}; see \\fB{_opt(page)}\\fR(1).\n")
    positionals = [a for a in command.positionals() if a.help]
    if positionals:
        out.append(".SH ARGUMENTS\n")
        for action in positionals:
            out.append(f".TP\n\\fI{_opt(metavar(action))}\\fR\n{_roff(action.help or '')}\n")
    groups = [(g.title or "options", [a for a in g._group_actions if a in command.options()])
              for g in command.parser._action_groups]
    groups = [(title, actions) for title, actions in groups if actions]
    if groups:
        out.append(".SH OPTIONS\n")
        for title, actions in groups:
            if len(groups) > 1:
                out.append(f".SS {_roff(title[:1].upper() + title[1:])}\n")
            out.extend(_option_item(action) for action in actions)
    if not command.path:
        out.append(".SH ENVIRONMENT\n")
        for name, text in ENVIRONMENT:
            out.append(f".TP\n\\fB{name}\\fR\n{_roff(text)}\n")
    related = [f"{'-'.join(('tether', *command.path[:-1]))}(1)"] if command.path else []
    related += [f"{command.page}-{name}(1)" for name in subs]
    related += [p for p in SEE_ALSO.get(command.path[0] if command.path else "", ()) if p not in related]
    out.append(".SH SEE ALSO\n" + ",\n".join(_see_also(p) for p in related) + "\n")
    return "".join(out)


def _see_also(page: str) -> str:
    name, section = page[:-1].split("(")
    return f"\\fB{_opt(name)}\\fR({section})"


# ---- bash completion


def _bash_words(words: Sequence[str]) -> str:
    return " ".join(words)


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script: ``complete -F _tether tether`` with the tree as case tables.

    Self-contained (no bash-completion helpers), so that it works with ``source`` in any bash.
    """
    commands = list(walk(parser))
    sub_cases, opt_cases, kind_cases = [], [], []
    for command in commands:
        key = " ".join(command.path)
        subs = list(command.subcommands())
        if subs:
            sub_cases.append(f'        "{key}") echo "{_bash_words(subs)}" ;;\n')
        flags = [s for a in command.options() for s in a.option_strings]
        opt_cases.append(f'        "{key}") echo "{_bash_words(flags)}" ;;\n')
        for action in command.options():
            if not takes_value(action) or action.nargs == "?":
                continue
            kind = value_kind(action)
            if kind == "choices":
                kind = "choices " + " ".join(str(c) for c in action.choices or ())
            for flag in action.option_strings:
                kind_cases.append(f'        "{key}|{flag}") echo "{kind}" ;;\n')
    return (
        "# bash completion for tether; generated by python -m tether.engine.cli.docs from tether's argument\n"
        "# parser: do not edit. Install as /usr/share/bash-completion/completions/tether, or source it.\n"
        "\n"
        "_tether_subcommands() {\n    case \"$1\" in\n" + "".join(sub_cases) + "    esac\n}\n\n"
        "_tether_options() {\n    case \"$1\" in\n" + "".join(opt_cases) + "    esac\n}\n\n"
        "# the value an option takes: 'choices WORD...', 'file', 'dir' or 'none'; nothing for a flag\n"
        "_tether_value() {\n    case \"$1|$2\" in\n" + "".join(kind_cases) + "    esac\n}\n\n"
        + _BASH_DRIVER
    )


_BASH_DRIVER = r"""_tether() {
    local cur=${COMP_WORDS[COMP_CWORD]} path="" i word kind next
    COMPREPLY=()
    # The command path so far: words that name a subcommand of the path before them; options and their
    # values are skipped (an option with '=' carries its value; bash splits '--opt=value' at the '=').
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        if [[ $word == -* ]]; then
            next=${COMP_WORDS[i + 1]:-}
            [[ $next == "=" ]] && { i=$((i + 2)); continue; }
            [[ -n $(_tether_value "$path" "$word") ]] && i=$((i + 1))
            continue
        fi
        if [[ " $(_tether_subcommands "$path") " == *" $word "* ]]; then
            path=${path:+$path }$word
        fi
    done
    local option=""
    if [[ $cur == "=" && ${COMP_WORDS[COMP_CWORD - 1]} == -* ]]; then
        option=${COMP_WORDS[COMP_CWORD - 1]} cur=""
    elif [[ ${COMP_WORDS[COMP_CWORD - 1]} == "=" && ${COMP_WORDS[COMP_CWORD - 2]} == -* ]]; then
        option=${COMP_WORDS[COMP_CWORD - 2]}
    elif [[ ${COMP_WORDS[COMP_CWORD - 1]} == -* && $cur != -* ]]; then
        option=${COMP_WORDS[COMP_CWORD - 1]}
    fi
    if [[ -n $option ]]; then
        kind=$(_tether_value "$path" "$option")
        case $kind in
            choices*) COMPREPLY=($(compgen -W "${kind#choices }" -- "$cur")); return ;;
            file) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur")); return ;;
            dir) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -d -- "$cur")); return ;;
            none) return ;;
        esac
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$(_tether_options "$path")" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$(_tether_subcommands "$path")" -- "$cur"))
    fi
}
complete -F _tether tether
"""


# ---- the files


def render_all(parser: argparse.ArgumentParser | None = None) -> dict[str, str]:
    """Every generated file, by path relative to ``contrib/``."""
    parser = parser if parser is not None else build_parser()
    commands = list(walk(parser))
    files = {f"man/{c.page}.1": man_page(c) for c in commands}
    files["completion/bash/tether"] = bash_completion(parser)
    return files


def differences(directory: Path, files: dict[str, str]) -> list[str]:
    """What ``directory`` holds that ``files`` do not say (stale, missing or extra generated files)."""
    found = {str(p.relative_to(directory)) for sub in ("man", "completion") if (directory / sub).is_dir()
             for p in (directory / sub).rglob("*") if not p.is_dir()}
    problems = [f"{name}: not generated any more" for name in sorted(found - set(files))]
    for name, text in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{name}: differs from what the parser says")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tether.engine.cli.docs --write|--check [DIR]``."""
    cli = argparse.ArgumentParser(prog="python -m tether.engine.cli.docs", description=__doc__.split("\n")[0])
    mode = cli.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="write the generated files")
    mode.add_argument("--check", action="store_true", help="exit 1 if the files differ from what would be written")
    cli.add_argument("directory", nargs="?", type=Path, default=Path(__file__).resolve().parents[2] / "contrib",
                     help="where man/ and completion/ are (default: the repository's contrib/)")
    args = cli.parse_args(argv)
    files = render_all()
    if args.check:
        problems = differences(args.directory, files)
        for problem in problems:
            print(f"{args.directory}/{problem}; run: python -m tether.engine.cli.docs --write", file=sys.stderr)
        return 1 if problems else 0
    for name in differences(args.directory, files):
        if name.endswith("not generated any more"):
            (args.directory / name.split(":")[0]).unlink()
    for name, text in files.items():
        path = args.directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
