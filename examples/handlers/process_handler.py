#!/usr/bin/env python3
"""A long-lived eventforge handler: serve Python functions to `eventforge worker`.

    eventforge worker tcp://127.0.0.1:9090 \
        --process "double=python3 examples/handlers/process_handler.py"

The worker starts a pool of these processes and sends each call as one
frame on stdin: a 4-byte big-endian length, then JSON
{"method": ..., "args": [...], "kwargs": {...}}. The process answers with
one frame on stdout: {"result": ...} or {"error": "...", "error_type": "..."}.
Logs go to stderr (stdout carries the frames).
"""

import json
import os
import struct
import sys


def double(n):
    return n * 2


def greet(name, greeting="hello"):
    return f"{greeting}, {name}"


def fail(message="failed on purpose"):
    raise ValueError(message)


def pid(die=False):
    if die:
        # Ends the process in the middle of a call: the worker answers the
        # call with a HandlerCrashed error and starts a new process.
        os._exit(3)
    return os.getpid()


FUNCTIONS = {f.__name__: f for f in (double, greet, fail, pid)}


def read_exactly(stream, size):
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def answer(call):
    # The worker may serve several methods with this script: pick the
    # function by the method name.
    function = FUNCTIONS.get(call.get("method"))
    if function is None:
        return {"error": f"no function {call.get('method')!r}", "error_type": "NameError"}
    try:
        return {"result": function(*call.get("args", []), **call.get("kwargs", {}))}
    except Exception as error:  # the caller sees the exception's class and text
        return {"error": str(error), "error_type": type(error).__name__}


def main():
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = read_exactly(stdin, 4)
        if header is None:
            return  # the worker closed our stdin: it is stopping
        (length,) = struct.unpack(">I", header)
        body = read_exactly(stdin, length)
        if body is None:
            return
        reply = json.dumps(answer(json.loads(body))).encode()
        stdout.write(struct.pack(">I", len(reply)) + reply)
        stdout.flush()


if __name__ == "__main__":
    main()
