"""The argument parser every command uses: a short help by default (what the command does, the flags people
use, examples; ``--help-all`` lists every field), human metavars, no prefix matching (``--max-step`` is an
error, not ``--max-steps``) and "did you mean" for a mistyped flag or command."""
from __future__ import annotations

import argparse
import difflib
import re
import sys
from typing import NoReturn, Sequence

# argparse's groups that the short help shows: the command's own flags and the shortcut flags
SHORT_HELP_GROUPS = ("options", "shortcuts")
METAVARS = {"Path": "PATH", "str": "TEXT", "int": "N", "float": "X", "Path | None": "PATH", "int | None": "N"}


def human_metavar(metavar: str) -> str:
    """``list[Path]`` -> ``PATH[,PATH...]`` (pydantic-settings takes a list as commas or a repeated flag)."""
    listed = re.fullmatch(r"(?:list|tuple)\[(.+)\]", metavar)
    if listed:
        item = human_metavar(listed.group(1))
        return f"{item}[,{item}...]"
    return METAVARS.get(metavar, metavar)


class HelpAll(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        assert isinstance(parser, HumaneParser)
        parser.print_help(full=True)
        parser.exit()


class HumaneParser(argparse.ArgumentParser):
    """An ArgumentParser with a short default help, ``--help-all``, human metavars, no abbreviations and
    suggestions for typos."""

    def __init__(self, *args, examples: Sequence[str] = (), **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)
        self.examples = list(examples)
        self.has_config_fields = False      # set by options.add_config_flags: then the short help applies
        self.config_flags: set[str] = set()     # one per configuration field: only --help-all lists them ...
        self.common_flags: set[str] = set()     # ... except these, which the short help shows too
        if self.add_help:
            self.add_argument("--help-all", action=HelpAll, help="show every flag (each configuration field)")

    # --------------------------------------------------------------------- help
    def print_help(self, file=None, full: bool = False) -> None:
        self._print_message(self.format_help(full), file or sys.stdout)

    def format_help(self, full: bool = False) -> str:
        self._humanise_metavars()
        if full or not self.has_config_fields:
            return super().format_help()
        formatter = self._get_formatter()
        formatter.add_usage(f"{self.prog} [FLAGS]", [], [])
        formatter.add_text(self.description)
        for group in self._action_groups:
            shown = [a for a in group._group_actions if self._in_short_help(a)]
            if group.title in SHORT_HELP_GROUPS and shown:
                formatter.start_section("common flags" if group.title == "options" else group.title)
                formatter.add_arguments(shown)
                formatter.end_section()
        if self.examples:
            formatter.start_section("examples")
            for example in self.examples:
                formatter.add_text(example)
            formatter.end_section()
        formatter.add_text(f"`{self.prog} --help-all` lists every flag (one per configuration field); lists take "
                           "commas or the flag repeated; --config FILE reads them from JSON, YAML or TOML.")
        return formatter.format_help()

    def _humanise_metavars(self) -> None:
        for action in self._actions:
            if isinstance(action.metavar, str):
                action.metavar = human_metavar(action.metavar)

    def _in_short_help(self, action: argparse.Action) -> bool:
        flags = set(action.option_strings)
        return not flags & self.config_flags or bool(flags & self.common_flags)

    def format_usage(self) -> str:
        if not self.has_config_fields:
            return super().format_usage()
        return f"usage: {self.prog} [FLAGS]   (--help: common flags and examples; --help-all: every flag)\n"

    # --------------------------------------------------------------------- errors
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        hint = self._suggestion(message)
        self.exit(2, f"{self.prog}: error: {message}{hint}\n")

    def _suggestion(self, message: str) -> str:
        unknown = re.match(r"unrecognized arguments: (.+)", message)
        if unknown:
            hints = []
            for word in unknown.group(1).split():
                if word.startswith("--"):
                    flag = word.split("=", 1)[0]
                    close = difflib.get_close_matches(flag, list(self._option_string_actions), n=3, cutoff=0.75)
                    if close:
                        hints.append(f"{flag}: did you mean {' or '.join(close)}?")
            return ("\n  " + "\n  ".join(hints)) if hints else f"\n  `{self.prog} --help-all` lists every flag"
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.+)\)", message)
        if choice:
            options = re.findall(r"'?([\w-]+)'?", choice.group(2))
            close = difflib.get_close_matches(choice.group(1), options, n=1, cutoff=0.6)
            return f"\n  did you mean {close[0]!r}?" if close else ""
        return ""

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but leftover flags are reported by the subcommand that was chosen (its usage and
        its own flags to suggest), not by the top-level parser."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            chosen = self._chosen_subparser(parsed)
            (chosen or self).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _chosen_subparser(self, parsed: argparse.Namespace) -> argparse.ArgumentParser | None:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                name = getattr(parsed, action.dest, None)
                return action.choices.get(name) if name else None
        return None
