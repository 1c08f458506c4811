// A small MessagePack encoder/decoder for parlor's frames (PROTOCOL.md §1):
// maps with string keys, strings, integers, floats, booleans, nil, arrays and
// binary. Integers beyond 2^53 lose precision (sequences and timestamps fit).
"use strict";

const MsgPack = (() => {
  const enc = new TextEncoder();
  const dec = new TextDecoder("utf-8", { fatal: true });

  function encode(value) {
    const out = new Writer();
    write(out, value);
    return out.finish();
  }

  class Writer {
    constructor() {
      this.buf = new Uint8Array(256);
      this.view = new DataView(this.buf.buffer);
      this.len = 0;
    }
    ensure(n) {
      if (this.len + n <= this.buf.length) return;
      let size = this.buf.length * 2;
      while (size < this.len + n) size *= 2;
      const next = new Uint8Array(size);
      next.set(this.buf.subarray(0, this.len));
      this.buf = next;
      this.view = new DataView(next.buffer);
    }
    u8(b) { this.ensure(1); this.buf[this.len++] = b; }
    u16(v) { this.ensure(2); this.view.setUint16(this.len, v); this.len += 2; }
    u32(v) { this.ensure(4); this.view.setUint32(this.len, v); this.len += 4; }
    bytes(b) { this.ensure(b.length); this.buf.set(b, this.len); this.len += b.length; }
    finish() { return this.buf.slice(0, this.len); }
  }

  function write(w, v) {
    if (v === null || v === undefined) return w.u8(0xc0);
    switch (typeof v) {
      case "boolean": return w.u8(v ? 0xc3 : 0xc2);
      case "number": return writeNumber(w, v);
      case "bigint": return writeBigInt(w, v);
      case "string": return writeString(w, v);
    }
    if (v instanceof Uint8Array) {
      if (v.length < 0x100) { w.u8(0xc4); w.u8(v.length); }
      else if (v.length < 0x10000) { w.u8(0xc5); w.u16(v.length); }
      else { w.u8(0xc6); w.u32(v.length); }
      return w.bytes(v);
    }
    if (Array.isArray(v)) {
      header(w, v.length, 0x90, 0xdc, 0xdd);
      for (const x of v) write(w, x);
      return;
    }
    const keys = Object.keys(v).filter((k) => v[k] !== undefined);
    header(w, keys.length, 0x80, 0xde, 0xdf);
    for (const k of keys) { writeString(w, k); write(w, v[k]); }
  }

  function header(w, n, fix, m16, m32) {
    if (n < 16) w.u8(fix | n);
    else if (n < 0x10000) { w.u8(m16); w.u16(n); }
    else { w.u8(m32); w.u32(n); }
  }

  function writeString(w, s) {
    const b = enc.encode(s);
    if (b.length < 32) w.u8(0xa0 | b.length);
    else if (b.length < 0x100) { w.u8(0xd9); w.u8(b.length); }
    else if (b.length < 0x10000) { w.u8(0xda); w.u16(b.length); }
    else { w.u8(0xdb); w.u32(b.length); }
    w.bytes(b);
  }

  function writeNumber(w, n) {
    if (Number.isInteger(n) && Math.abs(n) <= Number.MAX_SAFE_INTEGER) {
      if (n >= 0) {
        if (n < 0x80) return w.u8(n);
        if (n < 0x100) { w.u8(0xcc); return w.u8(n); }
        if (n < 0x10000) { w.u8(0xcd); return w.u16(n); }
        if (n < 0x100000000) { w.u8(0xce); return w.u32(n); }
        return writeBigInt(w, BigInt(n));
      }
      if (n >= -32) return w.u8(n & 0xff);
      if (n >= -0x80) { w.u8(0xd0); return w.u8(n & 0xff); }
      if (n >= -0x8000) { w.u8(0xd1); w.ensure(2); w.view.setInt16(w.len, n); w.len += 2; return; }
      if (n >= -0x80000000) { w.u8(0xd2); w.ensure(4); w.view.setInt32(w.len, n); w.len += 4; return; }
      return writeBigInt(w, BigInt(n));
    }
    w.u8(0xcb);
    w.ensure(8);
    w.view.setFloat64(w.len, n);
    w.len += 8;
  }

  function writeBigInt(w, n) {
    w.ensure(9);
    if (n >= 0n) { w.u8(0xcf); w.view.setBigUint64(w.len, n); }
    else { w.u8(0xd3); w.view.setBigInt64(w.len, n); }
    w.len += 8;
  }

  function decode(input) {
    const bytes = input instanceof Uint8Array ? input : new Uint8Array(input);
    const r = { bytes, view: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), pos: 0 };
    const v = read(r);
    if (r.pos !== bytes.length) throw new Error("msgpack: trailing bytes");
    return v;
  }

  function need(r, n) {
    if (r.pos + n > r.bytes.length) throw new Error("msgpack: truncated");
  }

  function read(r) {
    need(r, 1);
    const b = r.bytes[r.pos++];
    if (b < 0x80) return b;
    if (b >= 0xe0) return b - 0x100;
    if ((b & 0xf0) === 0x80) return readMap(r, b & 0x0f);
    if ((b & 0xf0) === 0x90) return readArray(r, b & 0x0f);
    if ((b & 0xe0) === 0xa0) return readStr(r, b & 0x1f);
    const v = r.view;
    let p = r.pos;
    switch (b) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: need(r, 1); r.pos += 1; return readBin(r, v.getUint8(p));
      case 0xc5: need(r, 2); r.pos += 2; return readBin(r, v.getUint16(p));
      case 0xc6: need(r, 4); r.pos += 4; return readBin(r, v.getUint32(p));
      case 0xca: need(r, 4); r.pos += 4; return v.getFloat32(p);
      case 0xcb: need(r, 8); r.pos += 8; return v.getFloat64(p);
      case 0xcc: need(r, 1); r.pos += 1; return v.getUint8(p);
      case 0xcd: need(r, 2); r.pos += 2; return v.getUint16(p);
      case 0xce: need(r, 4); r.pos += 4; return v.getUint32(p);
      case 0xcf: need(r, 8); r.pos += 8; return v.getUint32(p) * 0x100000000 + v.getUint32(p + 4);
      case 0xd0: need(r, 1); r.pos += 1; return v.getInt8(p);
      case 0xd1: need(r, 2); r.pos += 2; return v.getInt16(p);
      case 0xd2: need(r, 4); r.pos += 4; return v.getInt32(p);
      case 0xd3: need(r, 8); r.pos += 8; return Number(v.getBigInt64(p));
      case 0xd9: need(r, 1); r.pos += 1; return readStr(r, v.getUint8(p));
      case 0xda: need(r, 2); r.pos += 2; return readStr(r, v.getUint16(p));
      case 0xdb: need(r, 4); r.pos += 4; return readStr(r, v.getUint32(p));
      case 0xdc: need(r, 2); r.pos += 2; return readArray(r, v.getUint16(p));
      case 0xdd: need(r, 4); r.pos += 4; return readArray(r, v.getUint32(p));
      case 0xde: need(r, 2); r.pos += 2; return readMap(r, v.getUint16(p));
      case 0xdf: need(r, 4); r.pos += 4; return readMap(r, v.getUint32(p));
      // fixext / ext: skipped as null (parlor sends none).
      case 0xd4: need(r, 2); r.pos += 2; return null;
      case 0xd5: need(r, 3); r.pos += 3; return null;
      case 0xd6: need(r, 5); r.pos += 5; return null;
      case 0xd7: need(r, 9); r.pos += 9; return null;
      case 0xd8: need(r, 17); r.pos += 17; return null;
      case 0xc7: need(r, 2); r.pos += 2 + v.getUint8(p); return null;
      case 0xc8: need(r, 3); r.pos += 3 + v.getUint16(p); return null;
      case 0xc9: need(r, 5); r.pos += 5 + v.getUint32(p); return null;
    }
    throw new Error("msgpack: bad byte 0x" + b.toString(16));
  }

  function readStr(r, n) {
    need(r, n);
    const s = dec.decode(r.bytes.subarray(r.pos, r.pos + n));
    r.pos += n;
    return s;
  }

  function readBin(r, n) {
    need(r, n);
    const b = r.bytes.slice(r.pos, r.pos + n);
    r.pos += n;
    return b;
  }

  function readArray(r, n) {
    const a = new Array(n);
    for (let i = 0; i < n; i++) a[i] = read(r);
    return a;
  }

  function readMap(r, n) {
    const o = Object.create(null);
    for (let i = 0; i < n; i++) {
      const k = read(r);
      const val = read(r);
      if (typeof k === "string" && k !== "__proto__") o[k] = val;
    }
    return o;
  }

  return { encode, decode };
})();
