#!/usr/bin/env python3
"""Write the seed corpus for fuzz_envelope into corpus/envelope/.

Seeds are valid frames of every type, frames using the wider msgpack forms
the decoder also accepts, and hello/error bodies (the target tries every
input as a body too). msgpack is written by hand so no module is needed.
Run from anywhere; it rewrites the seed_* files it owns and nothing else.
"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "envelope")


def uint(v):
    if v <= 0x7F:
        return bytes([v])
    for marker, fmt, top in ((0xCC, ">B", 0xFF), (0xCD, ">H", 0xFFFF), (0xCE, ">I", 0xFFFFFFFF)):
        if v <= top:
            return bytes([marker]) + struct.pack(fmt, v)
    return b"\xcf" + struct.pack(">Q", v)


def sstr(s):
    b = s.encode() if isinstance(s, str) else s
    if len(b) <= 31:
        return bytes([0xA0 | len(b)]) + b
    if len(b) <= 0xFF:
        return b"\xd9" + bytes([len(b)]) + b
    return b"\xda" + struct.pack(">H", len(b)) + b


def binary(b):
    if len(b) <= 0xFF:
        return b"\xc4" + bytes([len(b)]) + b
    return b"\xc5" + struct.pack(">H", len(b)) + b


def frame(typ, target, sender, name, corr, body):
    return (b"\x97" + uint(1) + uint(typ) + sstr(target) + sstr(sender) + sstr(name)
            + uint(corr) + binary(body))


def hello(role, cap):
    return b"\x82" + sstr("role") + sstr(role) + sstr("capacity") + uint(cap)


def error(code, reason):
    return b"\x82" + sstr("code") + sstr(code) + sstr("reason") + sstr(reason)


SEEDS = {
    "hello": frame(1, "node/broker", "node/worker-1", "", 0, hello("worker", 64)),
    "heartbeat": frame(2, "node/broker", "node/client-7", "", 0, hello("client", 0)),
    "bye": frame(3, "node/broker", "node/worker-1", "", 0, b""),
    "send": frame(4, "list/42", "node/client-7", "list_added", 0, b"\x81\xa2id\x2a"),
    "request": frame(4, "contact/9", "node/client-7", "get", 123456789, b"\x80"),
    "reply": frame(5, "node/client-7", "contact/9", "get", 123456789, b"\x81\xa2ok\xc3"),
    "error": frame(6, "node/client-7", "node/broker", "get", 77,
                   error("no_route", "no worker owns contact/9")),
    "long_addr": frame(4, "k/" + "x" * 253, "s" * 255, "n" * 255, 2**64 - 1, b"\x00" * 300),
    # Wider spellings: array16, uint64 version, signed type, str8/str16/str32, bin32.
    "wide": (b"\xdc\x00\x07" + b"\xcf" + struct.pack(">Q", 1) + b"\xd0\x04"
             + b"\xd9\x03a/b" + b"\xda\x00\x06node/1" + b"\xdb\x00\x00\x00\x00"
             + b"\xd3" + struct.pack(">q", 5) + b"\xc6\x00\x00\x00\x02hi"),
    "body_hello": hello("worker", 70000),
    "body_error": error("timeout", "no reply within 5 s"),
    "body_extra_keys": (b"\x83" + sstr("x") + b"\x93\xc0\xc3\xd4\x01\x00" + sstr("role")
                        + sstr("worker") + sstr("capacity") + uint(3)),
}

os.makedirs(OUT, exist_ok=True)
for name, data in SEEDS.items():
    with open(os.path.join(OUT, "seed_" + name), "wb") as f:
        f.write(data)
print("wrote %d seeds to %s" % (len(SEEDS), OUT))
