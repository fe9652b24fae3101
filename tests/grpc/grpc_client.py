#!/usr/bin/python3
"""gRPC test client for the mesh's L7 tests, without generated code.

Makes N unary calls of METHOD (raw bytes, identity serializers) over one channel and prints
one JSON line: {"requests": N, "by_backend": {NAME: n}, "by_status": {"OK": n, ...},
"details": [first distinct error details], "last_ok": what the backend said
about the last successful call (its JSON: backend, method, metadata)}. The backend name is the first line of the
response, or the `x-backend` trailing metadata of a failed call ("" when absent).
Run with Debian's /usr/bin/python3 (python3-grpcio).
"""

import argparse
import json
import sys
import time

import grpc


def parse_metadata(items):
    md = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit("--metadata wants KEY=VALUE, got " + repr(item))
        md.append((key.lower(), value))
    return md


def backend_from_trailers(trailers):
    for key, value in trailers or ():
        if key == "x-backend":
            return value
    return ""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--method", required=True, help="/package.Service/Method")
    parser.add_argument("-n", type=int, default=1, help="number of calls")
    parser.add_argument("--metadata", action="append", default=[], help="KEY=VALUE")
    parser.add_argument("--timeout", type=float, default=5.0, help="per call, seconds")
    parser.add_argument("--payload", default="hello")
    parser.add_argument(
        "--interval", type=float, default=0.0, help="seconds between calls (a steady rate)"
    )
    args = parser.parse_args()
    metadata = parse_metadata(args.metadata)

    by_backend = {}
    by_status = {}
    details = []
    last_ok = None
    # Never through an HTTP proxy from the environment: the mesh is the only thing between
    # the client and the server.
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(args.target, options=options) as channel:
        call = channel.unary_unary(
            args.method, request_serializer=None, response_deserializer=None
        )
        for i in range(args.n):
            if i and args.interval:
                time.sleep(args.interval)
            try:
                response, _call = call.with_call(
                    args.payload.encode(), metadata=metadata, timeout=args.timeout
                )
                backend, _, rest = response.decode(errors="replace").partition("\n")
                try:
                    last_ok = json.loads(rest)
                except ValueError:
                    last_ok = rest
                status = "OK"
            except grpc.RpcError as err:
                status = err.code().name
                backend = backend_from_trailers(err.trailing_metadata())
                detail = status + ": " + (err.details() or "")
                if detail not in details and len(details) < 10:
                    details.append(detail)
            by_backend[backend] = by_backend.get(backend, 0) + 1
            by_status[status] = by_status.get(status, 0) + 1
    print(
        json.dumps(
            {
                "requests": args.n,
                "by_backend": by_backend,
                "by_status": by_status,
                "details": details,
                "last_ok": last_ok,
            },
            sort_keys=True,
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
