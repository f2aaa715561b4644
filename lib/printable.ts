// printable(): text from an untrusted source (a stream header, a parser's error) made safe to print on a terminal.

// C0 controls (tab and newline included: they forge lines), DEL, C1 controls (0x9b is a one-byte CSI on
// some terminals), the bidi embeddings, overrides and isolates that reorder what is shown, the line and
// paragraph separators, and lone surrogates.
/* eslint-disable no-control-regex -- matching control characters is the point */
const UNSAFE =
  /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/* eslint-enable no-control-regex */

const NAMED: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

function escape(c: string): string {
  const named = NAMED[c];
  if (named !== undefined) return named;
  const code = c.charCodeAt(0);
  return code < 0x100 ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
}

/**
 * `text` with every character a terminal would act on instead of showing written as an escape
 * (`\x1b`, `\x9b`, `\n`, `\u202e`), so that no escape sequence, forged line or reordering from
 * untrusted input reaches the terminal. Backslashes are left as they are: the result is for
 * reading, not for parsing back.
 */
export function printable(text: string): string {
  return String(text).replace(UNSAFE, escape);
}
