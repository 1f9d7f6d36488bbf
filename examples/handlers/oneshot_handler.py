#!/usr/bin/env python3
"""A one-shot eventforge handler: run once per call.

    eventforge worker tcp://127.0.0.1:9090 \
        --exec "shout=python3 examples/handlers/oneshot_handler.py"

Reads the call as JSON on stdin ({"method", "args", "kwargs"}) and writes
{"result": ...} or {"error": "...", "error_type": "..."} on stdout.
"""

import json
import sys


def main():
    call = json.load(sys.stdin)
    args = call.get("args", [])
    if call.get("method") == "shout":
        if len(args) != 1 or not isinstance(args[0], str):
            answer = {"error": "shout() takes one string", "error_type": "TypeError"}
        else:
            answer = {"result": args[0].upper() + "!"}
    else:
        answer = {"error": f"no function {call.get('method')!r}", "error_type": "NameError"}
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
