// The command line's option parser: util.parseArgs's strict grammar and messages, for the option kinds the CLI uses.
//
// Why not util.parseArgs itself: in the test guest its module load and first call took about 35 ms
// of every command's start-up (measured cold, in V8's interpreter under emulation), where the
// whole CLI's own start-up is about 200 ms. This file parses the same grammar in a few
// straight-line loops; a unit test runs both parsers over thousands of argument vectors and
// requires the same values, positionals and error messages.

export interface OptionSpec {
  type: 'boolean' | 'string';
  short?: string;
  multiple?: boolean;
}

export type OptionValues = Record<string, string | boolean | (string | boolean)[] | undefined>;

/** A malformed command line; `code` is util.parseArgs's for the same fault. */
export class ArgsError extends TypeError {
  constructor(
    readonly code:
      'ERR_PARSE_ARGS_UNKNOWN_OPTION' | 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' | 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL',
    message: string,
  ) {
    super(message);
    this.name = 'TypeError';
  }
}

interface Token {
  name: string;
  rawName: string;
  value: string | undefined;
  inlineValue: boolean;
}

function longNameOf(short: string, options: Readonly<Record<string, OptionSpec>>): string {
  for (const name of Object.keys(options)) if (options[name]!.short === short) return name;
  return short;
}

function typeOf(name: string, options: Readonly<Record<string, OptionSpec>>): OptionSpec['type'] | undefined {
  return Object.hasOwn(options, name) ? options[name]!.type : undefined;
}

/** Splits `args` into option tokens and positionals, as parseArgs's tokenizer does. */
function tokenize(
  args: readonly string[],
  options: Readonly<Record<string, OptionSpec>>,
): (Token | { positional: string })[] {
  const tokens: (Token | { positional: string })[] = [];
  const rest = [...args];
  while (rest.length > 0) {
    const arg = rest.shift()!;
    if (arg === '--') {
      for (const p of rest) tokens.push({ positional: p });
      break;
    }
    const dash = arg.charCodeAt(0) === 45; /* - */
    const second = arg.charCodeAt(1);
    if (dash && arg.length === 2 && second !== 45) {
      // -x, with the next argument as its value if it takes one
      const name = longNameOf(arg[1]!, options);
      const value = typeOf(name, options) === 'string' && rest.length > 0 ? rest.shift() : undefined;
      tokens.push({ name, rawName: arg, value, inlineValue: false });
    } else if (dash && arg.length > 2 && second !== 45) {
      const name = longNameOf(arg[1]!, options);
      if (typeOf(name, options) === 'string') {
        // -ovalue
        tokens.push({ name, rawName: `-${arg[1]!}`, value: arg.slice(2), inlineValue: true });
      } else {
        // -abc: each letter an option; a letter that takes a value takes the rest of the group
        const expanded: string[] = [];
        for (let i = 1; i < arg.length; i++) {
          const short = arg[i]!;
          expanded.push(`-${short}`);
          if (typeOf(longNameOf(short, options), options) === 'string' && i < arg.length - 1) {
            expanded.push(arg.slice(i + 1));
            break;
          }
        }
        rest.unshift(...expanded);
      }
    } else if (dash && second === 45 && arg.length > 2) {
      // --name=value; an '=' right after the dashes is part of the name, as parseArgs has it
      const eq = arg.indexOf('=', 3);
      if (eq === -1) {
        const name = arg.slice(2);
        const value = typeOf(name, options) === 'string' && rest.length > 0 ? rest.shift() : undefined;
        tokens.push({ name, rawName: arg, value, inlineValue: false });
      } else {
        tokens.push({ name: arg.slice(2, eq), rawName: arg.slice(0, eq), value: arg.slice(eq + 1), inlineValue: true });
      }
    } else {
      tokens.push({ positional: arg });
    }
  }
  return tokens;
}

/**
 * Parses `args` strictly against `options`: unknown options, a boolean given a value, a string
 * option without one (or with one that looks like an option, unless given as --name=-x) and, unless
 * allowed, positionals are errors. Booleans are true when present; a `multiple` option collects
 * its values in order, any other keeps its last.
 */
export function parseCommandLine(
  args: readonly string[],
  options: Readonly<Record<string, OptionSpec>>,
  allowPositionals: boolean,
): { values: OptionValues; positionals: string[] } {
  const values: OptionValues = Object.create(null) as OptionValues;
  const positionals: string[] = [];
  for (const token of tokenize(args, options)) {
    if ('positional' in token) {
      if (!allowPositionals)
        throw new ArgsError(
          'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL',
          `Unexpected argument '${token.positional}'. This command does not take positional arguments`,
        );
      positionals.push(token.positional);
      continue;
    }
    const spec = Object.hasOwn(options, token.name) ? options[token.name]! : undefined;
    if (!spec) {
      throw new ArgsError(
        'ERR_PARSE_ARGS_UNKNOWN_OPTION',
        allowPositionals
          ? `Unknown option '${token.rawName}'. To specify a positional argument starting with a '-', place it at the end of the command after '--', as in '-- ${JSON.stringify(token.rawName)}`
          : `Unknown option '${token.rawName}'`,
      );
    }
    const named = spec.short ? `-${spec.short}, --${token.name}` : `--${token.name}`;
    if (spec.type === 'string' && typeof token.value !== 'string')
      throw new ArgsError('ERR_PARSE_ARGS_INVALID_OPTION_VALUE', `Option '${named} <value>' argument missing`);
    if (spec.type === 'boolean' && token.value !== undefined)
      throw new ArgsError('ERR_PARSE_ARGS_INVALID_OPTION_VALUE', `Option '${named}' does not take an argument`);
    if (spec.type === 'string' && !token.inlineValue && token.value!.length > 1 && token.value![0] === '-') {
      const example = token.rawName.startsWith('--')
        ? `'--${token.name}=-XYZ'`
        : `'--${token.name}=-XYZ' or '${token.rawName}-XYZ'`;
      throw new ArgsError(
        'ERR_PARSE_ARGS_INVALID_OPTION_VALUE',
        `Option '${token.rawName}' argument is ambiguous.\nDid you forget to specify the option argument for '${token.rawName}'?\nTo specify an option argument starting with a dash use ${example}.`,
      );
    }
    const value = token.value ?? true;
    if (spec.multiple) {
      const list = values[token.name];
      if (Array.isArray(list)) list.push(value);
      else values[token.name] = [value];
    } else {
      values[token.name] = value;
    }
  }
  return { values, positionals };
}
