#!/usr/bin/env python3
"""A watcher that stops answering: it opens a watch with a stock grpcio channel, reads the
first message, prints "watching" and waits. The test then stops the whole process (SIGSTOP),
so that it answers nothing any more, HTTP/2 pings included, as a host that lost power would
not; its kernel keeps the TCP connection open.

    python3 stalled_watcher.py --controller 127.0.0.1:7001 --tls-dir DIR
"""

import argparse
import pathlib
import time

from weft_client import connect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--controller", required=True)
    parser.add_argument("--tls-dir", type=pathlib.Path, required=True)
    args = parser.parse_args()
    channel = connect(args.controller, args.tls_dir)
    # Raw bytes in and out: an empty WatchRequest (from revision 0: a snapshot first).
    watch = channel.unary_stream("/weft.v1.WatchService/Watch")(b"")
    next(watch)
    print("watching", flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    main()
