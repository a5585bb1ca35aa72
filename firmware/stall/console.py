# Technician console: a command table over a line stream. The commands come in a later issue; this is the place for them.
#
# Console(app).commands maps a name to (handler, help). A handler takes the
# argument list and returns the text to print. handle(line) never raises:
# a bad command or a handler's error becomes one "console: ..." line.
# run(reader, write) serves a stream: reader.readline() (asyncio
# StreamReader over the USB/UART REPL on a board, any async reader in tests)
# and write(text) for the answer.

from protocol import canonjson


class Console:
    def __init__(self, app):
        self.app = app
        self.commands = {}
        self.register("help", self._help, "list commands")
        self.register("status", self._status, "the stall's state as JSON")

    def register(self, name, handler, help=""):
        self.commands[name] = (handler, help)

    def handle(self, line):
        parts = line.strip().split()
        if not parts:
            return ""
        entry = self.commands.get(parts[0])
        if entry is None:
            return "console: unknown command " + parts[0] + " (try help)"
        try:
            return entry[0](parts[1:])
        except Exception as e:
            return "console: " + parts[0] + ": " + type(e).__name__ + ": " + str(e)

    def _help(self, args):
        names = sorted(self.commands)
        return "\n".join(n + "  " + self.commands[n][1] for n in names)

    def _status(self, args):
        return canonjson.dumps(self.app.info()).decode()

    async def run(self, reader, write):
        while True:
            line = await reader.readline()
            if not line:
                return
            if isinstance(line, (bytes, bytearray)):
                line = bytes(line).decode()
            out = self.handle(line)
            if out:
                write(out + "\n")
