import { randomInt } from 'node:crypto';

import { BackendFault } from './backend.mjs';
import { SessionState, quoteIdent, quoteLiteral } from './sessions.mjs';
import { blankLiterals, singleStatement } from './sql.mjs';
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
const STDIN_COPY = /\bcopy\b[\s\S]*\bfrom\s+stdin\b/i;
const mentionsStdinCopy = (sql) => STDIN_COPY.test(blankLiterals(sql));
const DISCARD_ALL = /^\s*discard\s+all\s*;?\s*$/i;
const RESET_ALL = /^\s*reset\s+all\s*;?\s*$/i;
const DEALLOCATE = /^\s*deallocate\s+(?:prepare\s+)?("(?:[^"]|"")+"|[\w$]+)\s*;?\s*$/i;
const DEALLOCATE_ALL = /^\s*deallocate\s+(?:prepare\s+)?all\s*;?\s*$/i;
const STARTUP_ONLY = new Set(['user', 'database', 'replication', 'options']);

let nextClientId = 1;

const raiseSql = ({ code, text, hint }) =>
  `do $bridge$ begin raise exception using errcode = ${quoteLiteral(code)}, message = ${quoteLiteral(text)}` +
  `${hint ? `, hint = ${quoteLiteral(hint)}` : ''}; end $bridge$`;

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
      this.#frame();
    } catch (err) {
      this.#fatal('08P01', `invalid frontend message: ${err.message}`);
      return;
    }
    this.#pump();
  }

  // Startup-phase messages have no type byte: framing stops after one until it is handled.
  #frame() {
    for (let msg = this.framer.next(); msg; msg = this.framer.next()) {
      this.inbox.push(msg);
      if (msg.type === null) return;
    }
  }

  async #pump() {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.inbox.length && !this.closed) {
        const msg = this.inbox.shift();
        await this.#handle(msg);
        if (msg.type === null) this.#frame();
      }
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
        if (this.skipTillSync) return this.#endSkip(msg);
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
      this.#onClose();
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
    if (extended && mentionsStdinCopy(sql)) {
      return {
        code: '0A000',
        text: 'COPY FROM STDIN is supported only through the simple query protocol on the embedded engine',
        hint: 'Send the COPY statement without parameters.',
      };
    }
    return null;
  }

  // A statement the bridge refuses inside an extended-protocol exchange: the backend raises the
  // error itself in its place, after whatever came before it, and skips on to the Sync as
  // PostgreSQL does, so that the order of replies and the transaction's fate are the server's.
  #startSkip(rejection) {
    this.pending.push(...this.#failingExchange(rejection));
    this.skipTillSync = true;
  }

  // Parse, Bind and Execute of an unnamed statement that raises `rejection`.
  #failingExchange(rejection) {
    const raise = raiseSql(typeof rejection === 'string' ? { code: '08006', text: rejection } : rejection);
    return [
      message('P', Buffer.concat([cstring(''), cstring(raise), Buffer.from([0, 0])])),
      message('B', Buffer.concat([cstring(''), cstring(''), Buffer.alloc(6)])),
      message('E', Buffer.concat([cstring(''), Buffer.alloc(4)])),
    ];
  }

  #endSkip(msg) {
    this.skipTillSync = false;
    this.pending.push(msg.bytes);
    return this.#dispatch();
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
      this.pending.push(simpleQuery(raiseSql(rejection)));
      return this.#dispatch();
    }
    if (mentionsStdinCopy(sql)) return this.#startCopy(sql);
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
      // Only statements that exist, so that no failing DEALLOCATE aborts an open transaction.
      // Other clients' SQL-level statements are parked while this one runs.
      const names = [...this.session.statements.keys()].map(quoteLiteral).join(', ');
      const own = this.backend.query(
        'select name from pg_catalog.pg_prepared_statements' +
          ` where from_sql${names ? ` or name in (${names})` : ''}`,
      );
      for (const [name] of own) this.backend.query(`deallocate ${quoteIdent(name)}`);
      this.session.statements.clear();
      this.socket.write(Buffer.concat([commandComplete('DEALLOCATE ALL'), readyForQuery(this.txStatus)]));
    });
  }

  // Waits until this client holds the backend with its session loaded. A grant can be undone
  // before this continuation runs (another path of the same client released it), so re-check.
  async #hold() {
    while (this.sessions.holder !== this) await this.sessions.acquire(this);
  }

  // Runs fn while holding the backend, releasing it afterwards unless a transaction is open.
  async #withBackend(fn) {
    await this.#hold();
    if (this.closed) return undefined;
    try {
      return fn();
    } finally {
      if (this.txStatus === 'I') this.sessions.release(this);
    }
  }

  async #dispatch() {
    const batch = Buffer.concat(this.pending);
    this.pending = [];
    await this.#hold();
    if (this.closed) return;
    const out = this.backend.exec(batch);
    const { status, deallocatedAll } = scanBackendOutput(out);
    if (status) {
      this.txStatus = status;
      this.openExchange = false;
    }
    if (deallocatedAll) this.sessions.restoreOthersStatements(this, this.txStatus === 'T');
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
    await this.#hold();
    if (this.closed) return;
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
      await this.#hold();
      // An unfinished extended exchange must not commit at the closing Sync: fail it first.
      const fail = this.openExchange ? this.#failingExchange('client disconnected') : [];
      this.backend.exec(Buffer.concat([...fail, syncMessage()]));
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
