import { randomInt } from 'node:crypto';

import { BackendFault } from './backend.mjs';
import { SessionState, quoteIdent, quoteLiteral } from './sessions.mjs';
import {
  CANCEL_REQUEST,
  GSSENC_REQUEST,
  PROTOCOL_3,
  SSL_REQUEST,
  Framer,
  ProtocolError,
  authenticationOk,
  backendKeyData,
  commandComplete,
  copyInResponse,
  cstring,
  errorResponse,
  message,
  parameterStatus,
  readCString,
  readyForQuery,
  scanBackendOutput,
  simpleQuery,
  syncMessage,
} from './wire.mjs';

const COPY_FROM_STDIN = /^\s*copy\s+([\s\S]*?)\s+from\s+stdin\b([\s\S]*?);?\s*$/i;
const COPY_TARGET = /^((?:"(?:[^"]|"")+"|[\w$]+)(?:\s*\.\s*(?:"(?:[^"]|"")+"|[\w$]+))?)\s*(?:\(([\s\S]*)\))?$/;
const MENTIONS_STDIN_COPY = /\bcopy\b[\s\S]*\bfrom\s+stdin\b/i;
const DISCARD_ALL = /^\s*discard\s+all\s*;?\s*$/i;
const RESET_ALL = /^\s*reset\s+all\s*;?\s*$/i;
const DEALLOCATE = /^\s*deallocate\s+(?:prepare\s+)?("(?:[^"]|"")+"|[\w$]+)\s*;?\s*$/i;
const DEALLOCATE_ALL = /^\s*deallocate\s+(?:prepare\s+)?all\s*;?\s*$/i;
const STARTUP_ONLY = new Set(['user', 'database', 'replication', 'options']);

let nextClientId = 1;

// The statement in `sql` without leading comments or a trailing semicolon, or null when `sql`
// holds more than one statement. Quotes are respected; dollar quotes are not expected in COPY.
export function singleStatement(sql) {
  let text = sql;
  for (;;) {
    const trimmed = text.replace(/^\s+/, '');
    if (trimmed.startsWith('--')) text = trimmed.replace(/^--[^\n]*(\n|$)/, '');
    else if (trimmed.startsWith('/*')) {
      const end = trimmed.indexOf('*/');
      if (end < 0) return null;
      text = trimmed.slice(end + 2);
    } else {
      text = trimmed;
      break;
    }
  }
  let quote = null;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (quote) {
      if (ch === quote) quote = null;
    } else if (ch === "'" || ch === '"') quote = ch;
    else if (ch === ';') return /^[\s;]*$/.test(text.slice(i)) ? text.slice(0, i) : null;
  }
  return quote ? null : text;
}

export class Client {
  constructor(socket, engine) {
    this.id = nextClientId++;
    this.socket = socket;
    this.engine = engine;
    this.sessions = engine.sessions;
    this.backend = engine.backend;
    this.log = engine.log;
    this.framer = new Framer({ startup: true });
    this.inbox = [];
    this.pending = [];
    this.pumping = false;
    this.closed = false;
    this.txStatus = 'I';
    this.copy = null;
    this.skipTillSync = false;
    this.openExchange = false; // extended-protocol messages sent since the last ReadyForQuery
    this.idleTimer = null;
    this.session = null;

    socket.setNoDelay(true);
    socket.on('data', (chunk) => this.#onData(chunk));
    socket.on('close', () => this.#onClose());
    socket.on('error', (err) => this.log(`client ${this.id}: socket error: ${err.message}`));
  }

  #onData(chunk) {
    this.#clearIdleTimer();
    this.framer.push(chunk);
    try {
      for (let msg = this.framer.next(); msg; msg = this.framer.next()) this.inbox.push(msg);
    } catch (err) {
      this.#fatal('08P01', `invalid frontend message: ${err.message}`);
      return;
    }
    this.#pump();
  }

  async #pump() {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.inbox.length && !this.closed) await this.#handle(this.inbox.shift());
    } catch (err) {
      if (err instanceof BackendFault) this.engine.fault(err);
      else if (err instanceof ProtocolError) this.#fatal('08P01', err.message);
      else {
        this.log(`client ${this.id}: internal error: ${err.stack ?? err}`);
        this.#fatal('XX000', `embedded engine internal error: ${err.message}`);
      }
    } finally {
      this.pumping = false;
    }
    this.#armIdleTimer();
  }

  async #handle(msg) {
    if (this.engine.debug) this.log(`client ${this.id} <- ${msg.type ?? 'startup'} (${msg.bytes.length} bytes)`);
    if (this.framer.expectStartup) return this.#handleStartup(msg);
    if (this.copy) return this.#handleCopy(msg);
    if (this.skipTillSync && msg.type !== 'S') return;
    switch (msg.type) {
      case 'P':
      case 'B':
      case 'D':
      case 'C':
      case 'E':
        return this.#queueExtended(msg);
      case 'H':
        // A Flush with nothing unfinished (psycopg sends one after each Sync) has no output.
        if (!this.openExchange && this.pending.length === 0) return;
        this.pending.push(msg.bytes);
        return this.#dispatch();
      case 'S':
        if (this.skipTillSync) return this.#endSkip();
        this.pending.push(msg.bytes);
        return this.#dispatch();
      case 'Q':
        return this.#handleQuery(msg);
      case 'F':
        this.pending.push(msg.bytes);
        return this.#dispatch();
      case 'X':
        this.socket.end();
        return this.#onClose();
      case 'd':
      case 'c':
      case 'f':
        return; // copy messages outside COPY are ignored, as PostgreSQL does
      default:
        throw new ProtocolError(`unexpected message type '${msg.type}'`);
    }
  }

  #handleStartup(msg) {
    const code = msg.body.readInt32BE(0);
    if (code === SSL_REQUEST || code === GSSENC_REQUEST) {
      this.socket.write('N');
      return;
    }
    if (code === CANCEL_REQUEST) {
      // A running statement cannot be interrupted inside WASM; the request is dropped.
      this.socket.end();
      this.closed = true;
      return;
    }
    if (code !== PROTOCOL_3) {
      this.#fatal('0A000', `unsupported frontend protocol ${code >> 16}.${code & 0xffff}`);
      return;
    }
    const params = {};
    let offset = 4;
    while (offset < msg.body.length && msg.body[offset] !== 0) {
      const [key, next] = readCString(msg.body, offset);
      const [value, after] = readCString(msg.body, next);
      params[key] = value;
      offset = after;
    }
    const settings = { ...this.sessions.baseline };
    for (const [key, value] of Object.entries(params)) {
      if (!STARTUP_ONLY.has(key)) settings[key.toLowerCase()] = value;
    }
    for (const [, key, value] of (params.options ?? '').matchAll(/(?:-c\s*|--)([\w.-]+)=((?:\\.|\S)+)/g)) {
      settings[key.replaceAll('-', '_').toLowerCase()] = value.replace(/\\(.)/g, '$1');
    }
    for (const name of Object.keys(settings)) if (name.includes('.')) this.sessions.customSettings.add(name);
    this.session = new SessionState(settings);
    this.sessions.register(this);
    this.framer.expectStartup = false;
    const status = { ...this.engine.parameterStatus };
    for (const key of Object.keys(status)) {
      const lower = key.toLowerCase();
      if (lower in settings) status[key] = settings[lower];
    }
    const out = [authenticationOk()];
    for (const [k, v] of Object.entries(status)) out.push(parameterStatus(k, v));
    out.push(backendKeyData(this.id, randomInt(2 ** 31 - 1)), readyForQuery('I'));
    this.socket.write(Buffer.concat(out));
    this.log(`client ${this.id}: connected (${params.application_name || 'no application_name'})`);
  }

  // Prefixes prepared-statement names so clients never see each other's. Portals need no
  // prefix: they end with their transaction, during which their client holds the backend.
  #rename(name) {
    return name === '' ? '' : `c${this.id}_${name}`;
  }

  #queueExtended(msg) {
    this.openExchange = true;
    const body = msg.body;
    let out;
    if (msg.type === 'P') {
      const [name, next] = readCString(body, 0);
      const [sql, rest] = readCString(body, next);
      const rejection = this.#rejectSql(sql, true);
      if (rejection) return this.#startSkip(rejection);
      this.sessions.noteCustomSettings(sql);
      const renamed = this.#rename(name);
      out = message('P', Buffer.concat([cstring(renamed), cstring(this.#rewriteDeallocate(sql)), body.subarray(rest)]));
      if (renamed) this.session.statements.set(renamed, out);
    } else if (msg.type === 'B') {
      const [portal, next] = readCString(body, 0);
      const [statement, rest] = readCString(body, next);
      out =
        statement === ''
          ? msg.bytes
          : message('B', Buffer.concat([cstring(portal), cstring(this.#rename(statement)), body.subarray(rest)]));
    } else if (msg.type === 'D' || msg.type === 'C') {
      const kind = String.fromCharCode(body[0]);
      const [name] = readCString(body, 1);
      if (kind === 'S') {
        const renamed = this.#rename(name);
        if (msg.type === 'C') this.session.statements.delete(renamed);
        out = message(msg.type, Buffer.concat([Buffer.from(kind), cstring(renamed)]));
      } else out = msg.bytes;
    } else {
      out = msg.bytes;
    }
    this.pending.push(out);
  }

  #rejectSql(sql, extended) {
    if (/\/dev\/blob/i.test(sql)) {
      return { code: '42501', text: 'the embedded engine reserves /dev/blob for its own COPY support' };
    }
    if (extended && (DISCARD_ALL.test(sql) || RESET_ALL.test(sql))) {
      return {
        code: '0A000',
        text: 'DISCARD ALL and RESET ALL are supported only through the simple query protocol on the embedded engine',
        hint: 'Send the statement without parameters and without preparing it.',
      };
    }
    if (extended && MENTIONS_STDIN_COPY.test(sql)) {
      return {
        code: '0A000',
        text: 'COPY FROM STDIN is supported only through the simple query protocol on the embedded engine',
        hint: 'Send the COPY statement without parameters.',
      };
    }
    return null;
  }

  // An error found by the bridge inside an extended-protocol batch: report it, then discard
  // messages until Sync, as the server would.
  #startSkip(rejection) {
    this.pending = [];
    this.openExchange = false;
    this.socket.write(errorResponse(rejection));
    this.skipTillSync = true;
  }

  async #endSkip() {
    this.skipTillSync = false;
    await this.#withBackend(() => {
      if (this.txStatus !== 'I') this.#failTransaction();
      // Ends any part of the exchange that reached the backend before the rejected message.
      const { status } = scanBackendOutput(this.backend.exec(syncMessage()));
      if (status) this.txStatus = status;
      this.openExchange = false;
      this.socket.write(readyForQuery(this.txStatus));
    });
  }

  // Puts the backend's open transaction into the failed state, as a server error would.
  #failTransaction() {
    this.backend.exec(simpleQuery("do $bridge$ begin raise exception 'rejected by the embedded engine'; end $bridge$"));
    this.txStatus = 'E';
  }

  async #handleQuery(msg) {
    const [sql] = readCString(msg.body, 0);
    this.sessions.noteCustomSettings(sql);
    const rejection = this.#rejectSql(sql, false);
    if (rejection) {
      return this.#withBackend(() => {
        this.socket.write(errorResponse(rejection));
        if (this.txStatus !== 'I') this.#failTransaction();
        this.socket.write(readyForQuery(this.txStatus));
      });
    }
    if (MENTIONS_STDIN_COPY.test(sql)) return this.#startCopy(sql);
    if (this.txStatus === 'I' && DISCARD_ALL.test(sql)) {
      return this.#withBackend(() => {
        this.sessions.discard(this);
        this.socket.write(Buffer.concat([commandComplete('DISCARD ALL'), readyForQuery('I')]));
      });
    }
    if (this.txStatus !== 'E' && RESET_ALL.test(sql)) {
      return this.#withBackend(() => {
        this.sessions.resetSettings(this);
        this.socket.write(Buffer.concat([commandComplete('RESET'), readyForQuery(this.txStatus)]));
      });
    }
    if (DEALLOCATE_ALL.test(sql) && this.txStatus !== 'E') return this.#deallocateAll();
    const rewritten = this.#rewriteDeallocate(sql);
    if (rewritten !== sql) {
      this.pending.push(simpleQuery(rewritten));
      return this.#dispatch();
    }
    this.pending.push(msg.bytes);
    return this.#dispatch();
  }

  // DEALLOCATE of one of this client's protocol-level statements names it as the backend does.
  #rewriteDeallocate(sql) {
    const match = DEALLOCATE.exec(sql);
    if (!match) return sql;
    const quoted = match[1].startsWith('"');
    const name = quoted ? match[1].slice(1, -1).replaceAll('""', '"') : match[1].toLowerCase();
    const renamed = this.#rename(name);
    if (!this.session.statements.has(renamed)) return sql;
    this.session.statements.delete(renamed);
    return `deallocate ${quoteIdent(renamed)}`;
  }

  async #deallocateAll() {
    await this.#withBackend(() => {
      for (const name of this.session.statements.keys()) this.backend.tryQuery(`deallocate ${quoteIdent(name)}`);
      this.session.statements.clear();
      // Other clients' SQL-level statements are parked while this one runs: these are its own.
      const own = this.backend.tryQuery('select name from pg_catalog.pg_prepared_statements where from_sql') ?? [];
      for (const [name] of own) this.backend.tryQuery(`deallocate ${quoteIdent(name)}`);
      this.socket.write(Buffer.concat([commandComplete('DEALLOCATE ALL'), readyForQuery(this.txStatus)]));
    });
  }

  // Runs fn while holding the backend, releasing it afterwards unless a transaction is open.
  async #withBackend(fn) {
    await this.sessions.acquire(this);
    try {
      return fn();
    } finally {
      if (this.txStatus === 'I') this.sessions.release(this);
    }
  }

  async #dispatch() {
    const batch = Buffer.concat(this.pending);
    this.pending = [];
    await this.sessions.acquire(this);
    if (this.closed) return;
    const out = this.backend.exec(batch);
    const { status, deallocatedAll } = scanBackendOutput(out);
    if (status) {
      this.txStatus = status;
      this.openExchange = false;
    }
    if (deallocatedAll) this.sessions.restoreOthersStatements(this);
    this.socket.write(out);
    // A batch ending in Flush keeps the backend: the extended-protocol exchange is unfinished.
    if (this.txStatus === 'I' && !this.openExchange) this.sessions.release(this);
  }

  async #startCopy(sql) {
    const statement = singleStatement(sql);
    const match = statement && COPY_FROM_STDIN.exec(statement);
    const target = match && COPY_TARGET.exec(match[1].trim());
    if (!target) {
      this.pending.push(simpleQuery(
        "do $bridge$ begin raise exception using errcode = '0A000', message = "
          + "'COPY FROM STDIN must be sent as a single COPY statement on the embedded engine'; end $bridge$",
      ));
      return this.#dispatch();
    }
    const options = match[2];
    const binary = /\bbinary\b/i.test(options);
    await this.sessions.acquire(this);
    let columns = 0;
    if (target[2] !== undefined) columns = target[2].split(',').length;
    else {
      const rows = this.backend.tryQuery(
        `select count(*) from pg_catalog.pg_attribute where attrelid = pg_catalog.to_regclass(${quoteLiteral(
          target[1],
        )}) and attnum > 0 and not attisdropped`,
      );
      columns = rows ? Number(rows[0][0]) : 0;
    }
    this.copy = {
      sql: statement.replace(/\bfrom\s+stdin\b/i, "from '/dev/blob'"),
      chunks: [],
      size: 0,
    };
    this.socket.write(copyInResponse(binary, columns));
  }

  async #handleCopy(msg) {
    const copy = this.copy;
    if (msg.type === 'd') {
      copy.chunks.push(msg.body);
      copy.size += msg.body.length;
      return;
    }
    if (msg.type === 'H' || msg.type === 'S') return;
    this.copy = null;
    if (msg.type === 'c') {
      const data = Buffer.concat(copy.chunks);
      copy.chunks = [];
      this.backend.setBlob(data);
      let out;
      try {
        out = this.backend.exec(simpleQuery(copy.sql));
      } finally {
        this.backend.clearBlob();
      }
      const { status } = scanBackendOutput(out);
      if (status) this.txStatus = status;
      this.socket.write(out);
    } else if (msg.type === 'f') {
      const [reason] = readCString(msg.body, 0);
      this.socket.write(errorResponse({ code: '57014', text: `COPY from stdin failed: ${reason}` }));
      if (this.txStatus !== 'I') this.#failTransaction();
      this.socket.write(readyForQuery(this.txStatus));
    } else {
      throw new ProtocolError(`unexpected message type '${msg.type}' during COPY`);
    }
    if (this.txStatus === 'I') this.sessions.release(this);
  }

  #armIdleTimer() {
    this.#clearIdleTimer();
    const timeout = this.engine.options.idleInTransactionTimeoutMs;
    if (!timeout || this.closed || this.sessions.holder !== this) return;
    this.idleTimer = setTimeout(() => {
      if (this.sessions.holder === this && this.sessions.hasWaiters() && !this.pumping) {
        this.log(`client ${this.id}: idle in transaction while others wait; terminating`);
        this.#fatal('25P03', 'terminating connection due to idle-in-transaction timeout');
      } else this.#armIdleTimer();
    }, timeout);
    this.idleTimer.unref();
  }

  #clearIdleTimer() {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = null;
  }

  #fatal(code, text) {
    if (!this.socket.destroyed) {
      this.socket.write(errorResponse({ severity: 'FATAL', code, text }));
      this.socket.end();
    }
    this.#onClose();
  }

  // Shutdown: tell the client why, then close.
  terminate(code, text) {
    this.#fatal(code, text);
  }

  async #onClose() {
    if (this.closed) return;
    this.closed = true;
    this.#clearIdleTimer();
    this.engine.clients.delete(this);
    if (!this.session) return;
    try {
      await this.sessions.acquire(this);
      // Close any unfinished extended exchange, then roll back what is open.
      this.backend.exec(syncMessage());
      if (this.txStatus !== 'I' || this.copy) this.backend.tryQuery('rollback');
      this.sessions.cleanup(this);
    } catch (err) {
      if (err instanceof BackendFault) this.engine.fault(err);
      else this.log(`client ${this.id}: cleanup failed: ${err.message}`);
    } finally {
      this.sessions.release(this);
    }
    this.log(`client ${this.id}: disconnected`);
  }
}
