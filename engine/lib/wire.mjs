// PostgreSQL v3 wire protocol helpers: framing of client messages, builders for the
// backend messages the bridge writes itself, and a reader for backend output.

export const SSL_REQUEST = 80877103;
export const GSSENC_REQUEST = 80877104;
export const CANCEL_REQUEST = 80877102;
export const PROTOCOL_3 = 196608;

// Splits a byte stream into whole messages, whatever the TCP chunking.
export class Framer {
  constructor({ startup }) {
    this.expectStartup = startup;
    this.chunks = [];
    this.length = 0;
  }

  push(chunk) {
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  // Returns the next whole message or null. Startup-phase messages have no type byte.
  next() {
    const headerSize = this.expectStartup ? 4 : 5;
    if (this.length < headerSize) return null;
    const head = this.#peek(headerSize);
    const bodyLength = this.expectStartup ? head.readInt32BE(0) : head.readInt32BE(1);
    const total = this.expectStartup ? bodyLength : bodyLength + 1;
    if (bodyLength < 4) throw new ProtocolError(`invalid message length ${bodyLength}`);
    if (this.length < total) return null;
    const bytes = this.#take(total);
    if (this.expectStartup) return { type: null, bytes, body: bytes.subarray(4) };
    return { type: String.fromCharCode(bytes[0]), bytes, body: bytes.subarray(5) };
  }

  #peek(n) {
    if (this.chunks[0].length >= n) return this.chunks[0];
    return Buffer.concat(this.chunks).subarray(0, n);
  }

  #take(n) {
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    const out = Buffer.from(all.subarray(0, n));
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.length = rest.length;
    return out;
  }
}

export class ProtocolError extends Error {}

export function message(type, body) {
  const out = Buffer.alloc(5 + body.length);
  out.write(type, 0, 'latin1');
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

export const cstring = (s) => Buffer.concat([Buffer.from(s, 'utf8'), Buffer.from([0])]);

export function int32(n) {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
}

export function int16(n) {
  const b = Buffer.alloc(2);
  b.writeInt16BE(n);
  return b;
}

export const authenticationOk = () => message('R', int32(0));
export const parameterStatus = (name, value) =>
  message('S', Buffer.concat([cstring(name), cstring(value)]));
export const backendKeyData = (pid, secret) =>
  message('K', Buffer.concat([int32(pid), int32(secret)]));
export const readyForQuery = (status) => message('Z', Buffer.from(status, 'latin1'));
export const commandComplete = (tag) => message('C', cstring(tag));

export function errorResponse({ severity = 'ERROR', code, text, detail, hint }) {
  const fields = [
    Buffer.from('S'), cstring(severity),
    Buffer.from('V'), cstring(severity),
    Buffer.from('C'), cstring(code),
    Buffer.from('M'), cstring(text),
  ];
  if (detail) fields.push(Buffer.from('D'), cstring(detail));
  if (hint) fields.push(Buffer.from('H'), cstring(hint));
  fields.push(Buffer.from([0]));
  return message('E', Buffer.concat(fields));
}

export function copyInResponse(binary, columns) {
  const format = binary ? 1 : 0;
  const parts = [Buffer.from([format]), int16(columns)];
  for (let i = 0; i < columns; i++) parts.push(int16(format));
  return message('G', Buffer.concat(parts));
}

export const simpleQuery = (sql) => message('Q', cstring(sql));
export const syncMessage = () => message('S', Buffer.alloc(0));

// Reads a NUL-terminated string at offset; returns [string, nextOffset].
export function readCString(buf, offset) {
  const end = buf.indexOf(0, offset);
  if (end < 0) throw new ProtocolError('unterminated string');
  return [buf.toString('utf8', offset, end), end + 1];
}

const DEALLOCATE_ALL_TAG = Buffer.from('DEALLOCATE ALL\0');

const isTag = (buf, at, tag) =>
  at + tag.length <= buf.length && buf.compare(tag, 0, tag.length, at, at + tag.length) === 0;

// Walks backend output and reports the last ReadyForQuery status and the first error.
export function scanBackendOutput(buf) {
  let offset = 0;
  let status = null;
  let error = null;
  let deallocatedAll = false;
  while (offset + 5 <= buf.length) {
    const type = buf[offset];
    const length = buf.readInt32BE(offset + 1);
    if (type === 0x5a) status = String.fromCharCode(buf[offset + 5]);
    else if (type === 0x45 && !error) error = parseErrorFields(buf.subarray(offset + 5, offset + 1 + length));
    else if (type === 0x43 && isTag(buf, offset + 5, DEALLOCATE_ALL_TAG)) deallocatedAll = true;
    offset += 1 + length;
  }
  return { status, error, deallocatedAll };
}

export function parseErrorFields(body) {
  const fields = {};
  let offset = 0;
  while (offset < body.length && body[offset] !== 0) {
    const key = String.fromCharCode(body[offset]);
    const [value, next] = readCString(body, offset + 1);
    fields[key] = value;
    offset = next;
  }
  return { severity: fields.S, code: fields.C, message: fields.M, detail: fields.D };
}

// Rows of text columns from backend output of a simple query (for the bridge's own queries).
export function readRows(buf) {
  const rows = [];
  let offset = 0;
  while (offset + 5 <= buf.length) {
    const type = buf[offset];
    const length = buf.readInt32BE(offset + 1);
    if (type === 0x44) {
      const count = buf.readInt16BE(offset + 5);
      let p = offset + 7;
      const row = [];
      for (let i = 0; i < count; i++) {
        const size = buf.readInt32BE(p);
        p += 4;
        if (size < 0) row.push(null);
        else {
          row.push(buf.toString('utf8', p, p + size));
          p += size;
        }
      }
      rows.push(row);
    }
    offset += 1 + length;
  }
  return rows;
}
