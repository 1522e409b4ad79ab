"""What a command writes, checked before it starts any work.

Every command declares its output options with one of the argparse types here
(``output_file``, ``output_dir``, ``output_path``). ``defense.core.parse_args`` finds them and,
right after parsing, refuses with one line naming the option and the path:

- an output that is also one of the command's inputs (it would be overwritten, or read half-written);
- a folder where a file goes, a file where a folder goes, a parent that is a file;
- a location this process cannot write to (found by creating and removing a probe file there,
  which holds for any user, root included, and for read-only mounts).

Missing parent folders are not an error: they are created when the output is written (``HELP``
says so in every command's ``--help``). Outputs a command derives from an option (a report beside
the file, a snapshot folder) are checked by the command itself with ``check_output``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Collection, Optional

from .core import ToolkitError

HELP = ("Outputs: missing parent folders are created; an output that cannot be written (a read-only location, a "
        "folder where a file goes or the reverse, a parent that is a file) or that names an input is refused "
        "before any work starts.")
"""The output rule, appended to the ``--help`` of every command with an output option."""

KINDS = ("file", "folder", None)


def _nearest_existing(path: Path) -> Path:
    return next((p for p in (path, *path.parents) if os.path.lexists(p)), Path(path.anchor))


def output_problem(path: os.PathLike | str, kind: Optional[str]) -> Optional[str]:
    """Why ``path`` cannot take a ``kind`` output (a ``file``, a ``folder``, None: either), or None."""
    path = Path(path).absolute()
    existing = _nearest_existing(path)
    if existing == path and kind == "file" and path.is_dir():
        return "is a folder, not a file"
    if existing == path and kind == "folder" and not path.is_dir():
        return "is a file, not a folder"
    if existing != path and not existing.is_dir():
        return f"{existing} is a file, so no folder can be made under it"
    folder = existing if existing != path or path.is_dir() else path.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
    except OSError as exc:
        return f"cannot write in {folder} ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(probe)
    return None


def check_output(path: os.PathLike | str, option: str, kind: Optional[str] = "file",
                 args: Optional[argparse.Namespace] = None, skip: Collection[str] = (),
                 outputs: Collection[str] = ()) -> None:
    """Refuse an output path (see ``output_problem``) in one line naming ``option`` and ``path``.

    Given the command's ``args``, also one that another option (not in ``skip``) names: that
    option's file would be overwritten, or read half-written (``outputs``: the dests that are outputs).
    """
    clash = same_file_option(args, path, skip) if args is not None else None
    if clash:
        role = "output" if clash in outputs else "input"
        raise ToolkitError(f"{option} {path} is also the {role} --{clash.replace('_', '-')}; "
                           "write the output elsewhere")
    problem = output_problem(path, kind)
    if problem:
        raise ToolkitError(f"{option} {path}: {problem}; choose another {option}")


def same_file_option(args: argparse.Namespace, target: os.PathLike | str, skip: Collection[str]) -> Optional[str]:
    """The dest of the option (not in ``skip``) whose value is the file ``target``, in any spelling;
    string values count only when they name an existing file (they may be names of other things)."""
    target = Path(target).resolve()
    for name, value in vars(args).items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            path = item if isinstance(item, Path) else Path(item) if isinstance(item, str) and os.path.isfile(item) else None
            if name not in skip and path is not None and path.resolve() == target:
                return name
    return None


class OutputPath:
    """An argparse type naming something the command writes: a ``file``, a ``folder``, or (None)
    either, where the command decides (and checks the kind itself with ``check_output``)."""

    help = HELP

    def __init__(self, kind: Optional[str]) -> None:
        assert kind in KINDS, kind
        self.kind = kind
        self.__name__ = f"output {kind or 'path'}"  # argparse names the type by it in its errors

    def __call__(self, text: str) -> Path:
        return Path(text)

    def check_output(self, args: argparse.Namespace, action: argparse.Action, outputs: Collection[str]) -> None:
        """Called by ``defense.core.parse_args`` for each output option given a value."""
        check_output(getattr(args, action.dest), max(action.option_strings, key=len, default=action.dest),
                     self.kind, args, skip={action.dest}, outputs=outputs)


output_file = OutputPath("file")
output_dir = OutputPath("folder")
output_path = OutputPath(None)
