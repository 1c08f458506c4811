#!/usr/bin/env python3
"""Writes the committed seed corpus, fuzz/corpus/{decode,frames,handshake}/,
and the libFuzzer dictionary fuzz/parlor.dict.

Run it again after changing it (`python3 fuzz/make_seeds.py`); the fuzz
script only reads the files. Seeds keep an extension: fuzz/.gitignore leaves
out what libFuzzer adds (hash names, no extension).
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_MESSAGE = 4096  # parlor_fuzz::MAX_MESSAGE


def mp(v):
    """Just enough MessagePack: maps with string keys, strings, uints, nil."""
    if v is None:
        return b"\xc0"
    if isinstance(v, bool):
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        assert v >= 0
        if v < 0x80:
            return bytes([v])
        if v < 0x100:
            return b"\xcc" + bytes([v])
        if v < 0x10000:
            return b"\xcd" + struct.pack(">H", v)
        if v < 0x100000000:
            return b"\xce" + struct.pack(">I", v)
        return b"\xcf" + struct.pack(">Q", v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32:
            return bytes([0xA0 | len(b)]) + b
        if len(b) < 0x100:
            return b"\xd9" + bytes([len(b)]) + b
        return b"\xda" + struct.pack(">H", len(b)) + b
    if isinstance(v, dict):
        assert len(v) < 16
        out = bytes([0x80 | len(v)])
        for k, x in v.items():
            out += mp(k) + mp(x)
        return out
    raise TypeError(v)


def js(v):
    return json.dumps(v, separators=(",", ":")).encode()


TEXT, BINARY, CLOSE, PING, PONG, CONT = 1, 2, 8, 9, 10, 0
ZERO = b"\0\0\0\0"  # a zero mask leaves payloads readable to the fuzzer


def frame(op, payload, fin=True, mask=ZERO, masked=True, wide=False):
    out = bytes([(0x80 if fin else 0) | op])
    bit = 0x80 if masked else 0
    n = len(payload)
    if wide or n >= 65536:
        out += bytes([bit | 127]) + struct.pack(">Q", n)
    elif n >= 126:
        out += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        out += bytes([bit | n])
    if not masked:
        return out + payload
    return out + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


JOIN = {"type": "join", "room": "lobby", "id": "j1"}
MESSAGE = {"type": "message", "id": "m1", "data": {"room": "lobby", "content": "hello"}}
HISTORY = {"type": "history", "room": "team-1.chat:general_x", "since": 42, "limit": 5000}
DECODE = {
    "join.json": js(JOIN),
    "join-since.json": js({"type": "join", "room": "a", "since": 7, "epoch": "e1"}),
    "leave.json": js({"type": "leave", "room": "lobby"}),
    "message.json": js(MESSAGE),
    "message-unicode.json": '{"type":"message","data":{"room":"r","content":"h\\u00e9 \u263a \\ud83d\\ude00"}}'.encode(),
    "history.json": js(HISTORY),
    "presence.json": js({"type": "presence", "room": "lobby"}),
    "ping.json": b' {"type":"ping","id":"p","extra":[1,{"x":null}]} ',
    "bad-room.json": js({"type": "join", "room": "../x", "id": "x"}),
    "unknown.json": js({"type": "dance", "id": "y"}),
    "join.msgpack": mp(JOIN),
    "message.msgpack": mp(MESSAGE),
    "history.msgpack": mp(HISTORY),
    "presence.msgpack": mp({"type": "presence", "room": "lobby", "id": None}),
    "ping.msgpack": mp({"type": "ping"}),
    "join-map16.msgpack": b"\xde\x00\x02" + mp("type") + mp("join") + mp("room") + mp("b"),
    "status.json": js({"type": "status", "status": "away", "text": "lunch ☺"}),
    "status.msgpack": mp({"type": "status", "status": "busy"}),
    "typing.json": js({"type": "typing", "room": "lobby"}),
    "typing.msgpack": mp({"type": "typing", "room": "dm:ann:bob"}),
    "read.json": js({"type": "read", "room": "lobby", "sequence": 12, "id": "r1"}),
    "read.msgpack": mp({"type": "read", "room": "lobby", "sequence": 3}),
    "refresh.json": js({"type": "refresh", "token": "a.b.c"}),
}

msg_json = js(MESSAGE)
hist_mp = mp(HISTORY)
snow = "sn\u2603w".encode()  # the snowman's 3 bytes straddle two frames
FRAMES = {
    "join.ws": frame(TEXT, js(JOIN)),
    "join-masked.ws": frame(TEXT, js(JOIN), mask=b"\x37\xfa\x21\x3d"),
    "join-message-close.ws": frame(TEXT, js(JOIN)) + frame(TEXT, msg_json)
    + frame(CLOSE, struct.pack(">H", 1000) + b"bye"),
    "fragmented-with-ping.ws": frame(TEXT, msg_json[:10], fin=False)
    + frame(PING, b"are you there")
    + frame(CONT, msg_json[10:30], fin=False, mask=b"\x01\x02\x03\x04")
    + frame(PONG, b"")
    + frame(CONT, msg_json[30:]),
    "utf8-split.ws": frame(TEXT, snow[:3], fin=False) + frame(CONT, snow[3:]),
    "msgpack.ws": frame(BINARY, mp(JOIN)) + frame(BINARY, hist_mp[:5], fin=False)
    + frame(CONT, hist_mp[5:]),
    "lengths.ws": frame(BINARY, bytes(200)) + frame(TEXT, js(JOIN), wide=True)
    + frame(PING, b"", wide=True),
    "bad-close-code.ws": frame(CLOSE, struct.pack(">H", 1005)),
    "unmasked.ws": frame(TEXT, js(JOIN), masked=False),
    "too-big.ws": frame(BINARY, bytes(MAX_MESSAGE // 2), fin=False)
    + frame(CONT, bytes(MAX_MESSAGE // 2 + 1)),
    "stray-continuation.ws": frame(CONT, b"x"),
    "interrupted.ws": frame(TEXT, b"{", fin=False) + frame(TEXT, b"{}"),
}


def upgrade(target="/ws", extra=b"", key=b"dGhlIHNhbXBsZSBub25jZQ=="):
    return (b"GET " + target.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key
            + b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n")


HANDSHAKE = {
    "plain.http": upgrade(),
    "root.http": upgrade("/"),
    "echo.http": upgrade("/echo"),
    "query.http": upgrade("/ws?user=ann&format=msgpack&token=a.b.c"),
    "encoded.http": upgrade("/ws?user=%C3%A9l%20a&x=%zz"),
    "browser.http": upgrade("/ws?user=bo", b"Origin: http://localhost:8080\r\n"
                            b"Sec-WebSocket-Protocol: parlor.v1.msgpack, parlor.v1.json\r\n"
                            b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                            b"Cookie: a=b; c=d\r\nUser-Agent: Mozilla/5.0\r\n"),
    "folded-tokens.http": upgrade("/ws", b"Connection: keep-alive\r\nConnection: foo , UPGRADE\r\n"),
    "with-frame.http": upgrade("/ws") + frame(TEXT, js({"type": "join", "room": "r"})),
    "absolute.http": upgrade("http://127.0.0.1:8080/ws"),
    "post.http": upgrade("/ws").replace(b"GET", b"POST", 1),
    "http10.http": upgrade("/ws").replace(b"HTTP/1.1", b"HTTP/1.0", 1),
    "body.http": upgrade("/ws", b"Content-Length: 3\r\n") + b"abc",
    "pipelined.http": b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + upgrade(),
}


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)



def dictionary():
    """The protocol's keys and types as JSON strings and MessagePack fixstrs,
    and a few frame heads (zero mask) for the frames target."""
    words = ["type", "join", "leave", "message", "history", "presence", "ping",
             "room", "id", "since", "epoch", "limit", "data", "content",
             "status", "text", "typing", "read", "sequence", "refresh", "token",
             "online", "away", "busy"]
    esc = lambda b: "".join(chr(c) if 32 <= c < 127 and c not in b'"\\' else f"\\x{c:02x}" for c in b)
    entries = [(f"json_{w}", js(w)) for w in words]
    entries += [(f"mp_{w}", mp(w)) for w in words]
    entries += [("json_null", b"null"), ("mp_nil", b"\xc0"), ("mp_map16", b"\xde\x00"),
                ("mp_u64", b"\xcf"), ("mp_str8", b"\xd9")]
    entries += [(f"head_{n}", bytes([b0, 0x80]) + ZERO) for n, b0 in
                [("text", 0x81), ("binary", 0x82), ("first", 0x01), ("cont", 0x00),
                 ("last", 0x80), ("ping", 0x89), ("pong", 0x8A), ("close", 0x88)]]
    entries += [(f"http_{n}", v) for n, v in
                [("get", b"GET "), ("version", b" HTTP/1.1\r\n"), ("crlf", b"\r\n"),
                 ("upgrade", b"Upgrade: websocket\r\n"), ("connection", b"Connection: Upgrade\r\n"),
                 ("key", b"Sec-WebSocket-Key: "), ("wsversion", b"Sec-WebSocket-Version: 13\r\n"),
                 ("protocol", b"Sec-WebSocket-Protocol: "), ("length", b"Content-Length: "),
                 ("chunked", b"Transfer-Encoding: chunked\r\n"), ("fold", b"\r\n \t"),
                 ("pct", b"%"), ("query", b"?user=")]]
    lines = ["# Written by make_seeds.py."] + [f'{n}="{esc(v)}"' for n, v in entries]
    with open(os.path.join(HERE, "parlor.dict"), "w") as f:
        f.write("\n".join(lines) + "\n")


write("decode", DECODE)
write("frames", FRAMES)
write("handshake", HANDSHAKE)
dictionary()
