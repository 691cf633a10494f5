"""``schism``: train, predict, evaluate and more without a GUI, on the same core as the napari plugin.

User errors (bad INI, unreadable image, existing output) end with one line on stderr and exit
code 2, never a traceback. Ctrl-C during training stops after the current batch and keeps the
best weights; a second Ctrl-C aborts.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..errors import SchismError
from . import demo, evaluate, export, launch, predict, sample, stats, train

EXIT_USER_ERROR = 2
# the subcommands in the order ``schism --help`` lists them; each module adds its own parser
COMMANDS = (train, predict, evaluate, export, stats, sample, demo, launch)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        return int(arguments.handler(arguments) or 0)
    except SchismError as error:
        print(f"schism: error: {one_line(str(error))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as error:  # a file system refusal the checks did not foresee: still one line
        from ..plumbing.atomic import DISK_FULL_ERRNOS

        where = f"{error.filename}: " if error.filename else ""
        reason = error.strerror or one_line(str(error))
        if error.errno in DISK_FULL_ERRNOS:  # writes go through atomic.py, which names the folder: a fallback
            reason = f"disk full ({reason}) while writing an output; free some space and run it again"
        print(f"schism: error: {where}{reason}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RuntimeError as error:  # a library's wrapper around a full disk (torch's serializer)
        from ..plumbing.atomic import disk_full_errno

        number = disk_full_errno(error)
        if number is None:
            raise
        reason = f"disk full ({os.strerror(number)}) while writing an output"
        print(f"schism: error: {reason}; free some space and run it again", file=sys.stderr)
        return EXIT_USER_ERROR
    except MemoryError:
        print("schism: error: out of memory; use a smaller --tile-size or --batch-size", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("schism: interrupted", file=sys.stderr)
        return 130


def one_line(text: str) -> str:
    """Messages quoting other libraries' errors can span lines; the CLI promises one."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="schism", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"schism-napari {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
