"""A tiny authoritative DNS server on 127.0.0.1 for tests: TXT records from a dict, over UDP
and TCP on one system-chosen port, answers built by dnspython.

Why: DKIM verifiers outside our process (dkimpy's ``dkimverify``, Perl's Mail::DKIM) resolve
``<selector>._domainkey.<domain>`` through real DNS; pointing them at this server tests them
exactly as they run, with no record files or monkey-patching of their look-ups.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from types import TracebackType

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset


def txt_strings(value: str) -> list[bytes]:
    """A TXT value cut into the <=255-byte character-strings DNS requires (RFC 1035 §3.3)."""
    data = value.encode()
    return [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]


class DNSResponder:
    """Answers TXT queries for the names in ``records`` (NXDOMAIN otherwise); a context manager."""

    def __init__(self, records: dict[str, str] | None = None, ttl: int = 60) -> None:
        self.records: dict[dns.name.Name, str] = {}
        self.ttl = ttl
        self.queries: list[str] = []
        for name, value in (records or {}).items():
            self.add(name, value)
        self._servers: list[socketserver.BaseServer] = []
        self.port = 0

    def add(self, name: str, value: str) -> None:
        self.records[dns.name.from_text(name)] = value

    def answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None  # not DNS: drop it, as a real server would
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        self.queries.append(question.name.to_text())
        value = self.records.get(question.name)
        if value is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype in (dns.rdatatype.TXT, dns.rdatatype.ANY):
            rdata = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, txt_strings(value))
            response.answer.append(dns.rrset.from_rdata(question.name, self.ttl, rdata))
        return response.to_wire()  # other types: NOERROR, no data

    def start(self) -> DNSResponder:
        responder = self

        class UDPHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = responder.answer(data)
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class TCPHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                header = self.request.recv(2, socket.MSG_WAITALL)
                if len(header) != 2:
                    return
                (length,) = struct.unpack("!H", header)
                reply = responder.answer(self.request.recv(length, socket.MSG_WAITALL))
                if reply is not None:
                    self.request.sendall(struct.pack("!H", len(reply)) + reply)

        # UDP picks the port; TCP takes the same one (retry in the rare case it is taken).
        for _ in range(20):
            udp = socketserver.ThreadingUDPServer(("127.0.0.1", 0), UDPHandler)
            try:
                tcp = socketserver.ThreadingTCPServer(("127.0.0.1", udp.server_address[1]), TCPHandler)
            except OSError:
                udp.server_close()
                continue
            break
        else:
            raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")
        udp.daemon_threads = tcp.daemon_threads = True
        self._servers = [udp, tcp]
        self.port = int(udp.server_address[1])
        for server in self._servers:
            threading.Thread(target=server.serve_forever, name="dns-responder", daemon=True).start()
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []

    def __enter__(self) -> DNSResponder:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
