# overstay command line: one entry point and a table of subcommand modules.
import argparse
import importlib
import sys

from host_tools.errors import UserError

# Each module defines register(subparsers): it adds its parser(s) and sets
# `func` (a callable taking the parsed args and returning an exit code).
COMMANDS = (
    "host_tools.fee_cmd",
    "host_tools.bridge_cmd",
    "host_tools.keys_cmd",
    "host_tools.tariff_cmd",
    "host_tools.export",
    "host_tools.flash",
    "host_tools.console",
    "host_tools.sim",
    "host_tools.demo",
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line, without the usage block."""

    def error(self, message):
        raise UserError(self.prog + ": error: " + message)


def build_parser():
    parser = _Parser(prog="overstay", description="Idle-fee enforcement for EV charging stalls.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.func(args) or 0
    except UserError as e:
        msg = str(e)
        if not msg.startswith("overstay"):
            msg = "overstay: error: " + msg
        print(msg, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("overstay: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
