"""A JSON command handler: the guest sends {"cmd": ..., "args": [...]}, the VMM answers."""

from typing import Any

from pyflank.exit_handler import ExitHandlerIntelX64


class JsonCommands(ExitHandlerIntelX64):
    COMMANDS = {"add": sum, "max": max, "echo": list}

    def handle_vmcall_data_string_json(self, ijson: Any) -> Any:
        command = self.COMMANDS.get(ijson.get("cmd")) if isinstance(ijson, dict) else None
        if command is None:
            return {"error": "unknown command", "known": sorted(self.COMMANDS)}
        return {"result": command(ijson.get("args", []))}


if __name__ == "__main__":
    import subprocess

    # Through bfm, as a user would: load, start, send, stop.
    for args in (["load", __file__], ["start"], ["vmcall", "string", "json",
                 '{"cmd": "add", "args": [1, 2, 39]}'], ["stop"]):  # fmt: skip
        subprocess.run(["bfm", *args], check=True)
