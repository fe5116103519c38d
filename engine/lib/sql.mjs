// Just enough SQL lexing for the bridge: comments and quoted text, no parsing.

// `sql` with comments and the contents of quoted strings and identifiers blanked out, so that
// keywords are found only where they are keywords. Dollar quotes are not handled.
export function blankLiterals(sql) {
  let out = '';
  let i = 0;
  while (i < sql.length) {
    const ch = sql[i];
    const next = sql[i + 1];
    if (ch === '-' && next === '-') {
      const end = sql.indexOf('\n', i) < 0 ? sql.length : sql.indexOf('\n', i);
      out += ' '.repeat(end - i);
      i = end;
    } else if (ch === '/' && next === '*') {
      const end = sql.indexOf('*/', i + 2) < 0 ? sql.length : sql.indexOf('*/', i + 2) + 2;
      out += ' '.repeat(end - i);
      i = end;
    } else if (ch === "'" || ch === '"') {
      let end = i + 1;
      while (end < sql.length && !(sql[end] === ch && sql[end + 1] !== ch)) end += sql[end] === ch ? 2 : 1;
      out += ch + ' '.repeat(Math.max(0, end - i - 1)) + ch;
      i = end + 1;
    } else {
      out += ch;
      i += 1;
    }
  }
  return out;
}

// The statement in `sql` without leading comments or a trailing semicolon, or null when `sql`
// holds more than one statement.
export function singleStatement(sql) {
  const blanked = blankLiterals(sql);
  const start = blanked.search(/\S/);
  if (start < 0) return null;
  const semicolon = blanked.indexOf(';', start);
  if (semicolon >= 0 && !/^[\s;]*$/.test(blanked.slice(semicolon))) return null;
  return sql.slice(start, semicolon >= 0 ? semicolon : sql.length).trimEnd() || null;
}
