#!/usr/bin/python3
"""gRPC test backend for the mesh's L7 tests, without generated code.

Methods are served by a generic handler with identity (bytes) serializers, so no .proto
and no protoc are needed:

  /mesh.test.Echo/Say     OK; the response is b"NAME\n" + JSON of the received metadata
  /mesh.test.Echo/Fail    UNAVAILABLE (status travels in the trailers)
  /mesh.test.Other/Ping   OK, like Say

Every call also gets `x-backend: NAME` as initial and trailing metadata. Prints
{"listening": ADDR} once serving. Run with Debian's /usr/bin/python3 (python3-grpcio).
"""

import argparse
import json
import os
import signal
import sys
import threading
from concurrent import futures

import grpc


class Stats:
    """Request counters, rewritten atomically (write + rename) after every call."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.requests = 0
        self.by_method = {}
        self.by_status = {}
        self.store()

    def record(self, method, status):
        with self.lock:
            self.requests += 1
            self.by_method[method] = self.by_method.get(method, 0) + 1
            self.by_status[status] = self.by_status.get(status, 0) + 1
            self.store()

    def store(self):
        if not self.path:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(
                {
                    "requests": self.requests,
                    "by_method": self.by_method,
                    "by_status": self.by_status,
                },
                f,
            )
        os.rename(tmp, self.path)


def metadata_json(context):
    md = {}
    for key, value in context.invocation_metadata():
        if isinstance(value, bytes):  # "-bin" keys
            value = value.hex()
        md.setdefault(key, []).append(value)
    return md


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="ADDR:PORT")
    parser.add_argument("--name", required=True)
    parser.add_argument("--stats-file")
    args = parser.parse_args()
    name = args.name
    stats = Stats(args.stats_file)

    def ok(method):
        def handler(request, context):
            context.send_initial_metadata((("x-backend", name),))
            context.set_trailing_metadata((("x-backend", name),))
            body = {
                "backend": name,
                "method": method,
                "metadata": metadata_json(context),
                "request_bytes": len(request),
            }
            stats.record(method, "OK")
            return (name + "\n" + json.dumps(body, sort_keys=True)).encode()

        return handler

    def fail(request, context):
        context.set_trailing_metadata((("x-backend", name),))
        stats.record("/mesh.test.Echo/Fail", "UNAVAILABLE")
        context.abort(grpc.StatusCode.UNAVAILABLE, name + " fails on purpose")

    def unary(fn):
        # None (de)serializers: requests and responses are raw bytes.
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=None, response_serializer=None
        )

    handlers = [
        grpc.method_handlers_generic_handler(
            "mesh.test.Echo",
            {"Say": unary(ok("/mesh.test.Echo/Say")), "Fail": unary(fail)},
        ),
        grpc.method_handlers_generic_handler(
            "mesh.test.Other", {"Ping": unary(ok("/mesh.test.Other/Ping"))}
        ),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=handlers)
    port = server.add_insecure_port(args.listen)
    if port == 0:
        print(json.dumps({"ok": False, "error": "cannot bind " + args.listen}), flush=True)
        return 2
    server.start()
    print(json.dumps({"listening": args.listen, "port": port, "name": name}), flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
