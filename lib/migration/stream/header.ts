// The stream header's JSON document: its type, and the one check of its shape that the encoder and decoder share.

export interface StreamHeader {
  protocol: 'v1' | 'v2';
  device: Record<string, unknown>;
  [key: string]: unknown;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Why `h` is not a valid stream header, or undefined when it is one. */
export function headerProblem(h: unknown): string | undefined {
  if (!isPlainObject(h)) {
    return `it must be a JSON object, got ${h === null ? 'null' : Array.isArray(h) ? 'an array' : typeof h}`;
  }
  if (h.protocol !== 'v1' && h.protocol !== 'v2') {
    return `its protocol must be 'v1' or 'v2', got ${JSON.stringify(h.protocol) ?? 'nothing'}`;
  }
  if (!isPlainObject(h.device)) return 'its device must be an object';
  return undefined;
}
