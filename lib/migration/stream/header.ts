// The stream header's JSON document: its type, and the one check of its shape, shared by the encoder and the decoder.
import { printable } from '../../printable';
import { StreamError, at } from './errors';

export interface StreamHeader {
  protocol: 'v1' | 'v2';
  device: Record<string, unknown>;
  [key: string]: unknown;
}

/**
 * What a header may hold. A reader compares and prints these fields, so each has a type and a
 * size: no depth that overflows a recursive walk, no object where a string is printed.
 */
export const HEADER_LIMITS = {
  /** Nesting of arrays and objects, the header object itself being level 1. */
  depth: 6,
  /** Members of one object or array. */
  members: 256,
  /** Characters of one string (keys included). */
  string: 16 * 1024,
  /** Nesting below a field the format does not define (`"note": {"a": [1]}` is 2). */
  extraDepth: 2,
} as const;

/** A problem in a header, and the field it is in ('device.vendor'; '' for the header itself). */
export interface HeaderProblem {
  field: string;
  problem: string;
  /** A size over HEADER_LIMITS (the encoder throws a RangeError), rather than a wrong type. */
  limit?: boolean;
}

type Json = unknown;

function isPlainObject(v: Json): v is Record<string, Json> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A short, printable description of a value, for a message. */
function describe(v: Json): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'string') {
    const shown = v.length > 40 ? `${v.slice(0, 40)}...` : v;
    return printable(JSON.stringify(shown));
  }
  return typeof v === 'number' || typeof v === 'boolean' ? String(v) : `a ${typeof v}`;
}

const isScalar = (v: Json): boolean =>
  v === null || typeof v === 'boolean' || typeof v === 'string' || (typeof v === 'number' && Number.isFinite(v));

const name = (parent: string, key: string): string => {
  const k = /^[A-Za-z_$][\w$]*$/.test(key) ? key : printable(JSON.stringify(key.slice(0, 40)));
  return parent ? `${parent}.${k}` : k;
};

/**
 * Checks the sizes of a value: strings, member counts and nesting (`depth` is the level of `v`,
 * `maxDepth` the deepest level allowed). Stops at the first problem, and never goes deeper than
 * maxDepth, so a cyclic or absurdly deep object is safe to give it.
 */
function sizeProblem(v: Json, field: string, depth: number, maxDepth: number): HeaderProblem | undefined {
  if (typeof v === 'string') {
    return v.length > HEADER_LIMITS.string
      ? { field, problem: `is a string of ${v.length} characters, more than ${HEADER_LIMITS.string}`, limit: true }
      : undefined;
  }
  if (v === undefined || isScalar(v)) return undefined; // undefined: the encoder's JSON.stringify drops it
  if (typeof v !== 'object') return { field, problem: `must be JSON data, got ${describe(v)}` };
  if (depth > maxDepth) return { field, problem: `is nested deeper than ${maxDepth} levels`, limit: true };
  const entries: [string, Json][] = Array.isArray(v)
    ? v.map((x, i): [string, Json] => [String(i), x])
    : Object.entries(v as object);
  if (entries.length > HEADER_LIMITS.members) {
    return { field, problem: `has ${entries.length} keys or items, more than ${HEADER_LIMITS.members}`, limit: true };
  }
  for (const [k, x] of entries) {
    if (k.length > HEADER_LIMITS.string) return { field, problem: `has a key of ${k.length} characters`, limit: true };
    const p = sizeProblem(x, Array.isArray(v) ? `${field}[${k}]` : name(field, k), depth + 1, maxDepth);
    if (p) return p;
  }
  return undefined;
}

/** Why `h` is not a valid stream header, or undefined when it is one. */
export function headerProblem(h: Json): HeaderProblem | undefined {
  if (!isPlainObject(h)) return { field: '', problem: `it must be a JSON object, got ${describe(h)}` };
  if (h.protocol !== 'v1' && h.protocol !== 'v2') {
    return { field: 'protocol', problem: `protocol must be 'v1' or 'v2', got ${describe(h.protocol)}` };
  }
  if (!isPlainObject(h.device))
    return { field: 'device', problem: `device must be an object, got ${describe(h.device)}` };
  for (const [k, v] of Object.entries(h.device)) {
    if (!isScalar(v) && v !== undefined) {
      const field = name('device', k);
      return { field, problem: `${field} must be a string, number, boolean or null, got ${describe(v)}` };
    }
  }
  if (h.created !== undefined && typeof h.created !== 'string') {
    return { field: 'created', problem: `created must be a string, got ${describe(h.created)}` };
  }
  if (h.tool !== undefined) {
    if (!isPlainObject(h.tool)) return { field: 'tool', problem: `tool must be an object, got ${describe(h.tool)}` };
    for (const k of ['name', 'version']) {
      const v = h.tool[k];
      if (typeof v !== 'string')
        return { field: `tool.${k}`, problem: `tool.${k} must be a string, got ${describe(v)}` };
    }
  }
  if (h.migration !== undefined && !isPlainObject(h.migration)) {
    return { field: 'migration', problem: `migration must be an object, got ${describe(h.migration)}` };
  }
  const known = new Set(['protocol', 'device', 'created', 'tool', 'migration']);
  for (const [k, v] of Object.entries(h)) {
    const field = name('', k);
    const p = known.has(k)
      ? sizeProblem(v, field, 2, HEADER_LIMITS.depth)
      : sizeProblem(v, field, 1, HEADER_LIMITS.extraDepth);
    if (p) return { ...p, problem: `${p.field} ${p.problem}` };
  }
  if (Object.keys(h).length > HEADER_LIMITS.members) {
    return { field: '', problem: `it has more than ${HEADER_LIMITS.members} keys`, limit: true };
  }
  return undefined;
}

/**
 * The deepest nesting of `json` before parsing it, so that no parser or walk recurses into a
 * 1 MiB pile of brackets: a StreamError naming the top-level field and the offset of the first
 * bracket too deep. `base` is the stream offset of json[0].
 */
function checkNesting(json: Buffer, base: number): void {
  let depth = 0;
  let inString = false;
  let keyStart = -1;
  let lastKey = '';
  for (let i = 0; i < json.length; i++) {
    const c = json[i]!;
    if (inString) {
      if (c === 0x5c)
        i++; // backslash: skip the escaped byte
      else if (c === 0x22) {
        inString = false;
        if (depth === 1 && keyStart >= 0) lastKey = json.toString('utf8', keyStart, Math.min(i, keyStart + 40));
      }
    } else if (c === 0x22) {
      inString = true;
      keyStart = i + 1;
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > HEADER_LIMITS.depth) {
        const field = depth > 2 && lastKey ? `field ${name('', lastKey)}: ` : '';
        throw StreamError.malformed(
          at.header(base + i),
          `${field}the header JSON is nested deeper than ${HEADER_LIMITS.depth} levels`,
        );
      }
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
}

/**
 * Parses and checks the header JSON (`base`: its stream offset). The one place a header read from
 * a stream is judged: whatever passes has the types StreamHeader promises, within HEADER_LIMITS.
 */
export function parseHeader(json: Buffer, base: number): StreamHeader {
  checkNesting(json, base);
  let header: Json;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(json));
  } catch (err) {
    throw StreamError.malformed(
      at.header(base),
      `the header is not valid UTF-8 JSON: ${printable((err as Error).message)}`,
    );
  }
  const problem = headerProblem(header);
  if (problem !== undefined) throw StreamError.malformed(at.header(base), problem.problem);
  return header as StreamHeader;
}
