"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, a free port, every message saved.

Usage: python3 smtp_sink.py OUT_DIR
Prints the port on the first line of stdout once listening. For each message it writes
OUT_DIR/NNNNNN.eml (raw) and OUT_DIR/NNNNNN.json (envelope, decoded headers and parts),
each renamed into place when complete so a reader never sees half a file.
"""

import asyncio
import email
import email.policy
import json
import os
import socket
import sys

from aiosmtpd.smtp import SMTP


class Saver:
    def __init__(self, out):
        self.out = out
        self.n = 0

    def _write(self, name, data):
        tmp = os.path.join(self.out, "." + name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, os.path.join(self.out, name))

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        parts = {}
        for part in msg.walk():
            if part.get_content_maintype() == "text":
                parts[part.get_content_type()] = part.get_content()
        doc = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "headers": {k.lower(): str(v) for k, v in msg.items()},
            "text": parts.get("text/plain"),
            "html": parts.get("text/html"),
        }
        name = "%06d" % self.n
        self._write(name + ".eml", raw)
        self._write(name + ".json", json.dumps(doc).encode())
        return "250 OK"


async def main():
    out = sys.argv[1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    loop = asyncio.get_running_loop()
    handler = Saver(out)
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="sink.test"), sock=sock
    )
    print(sock.getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
