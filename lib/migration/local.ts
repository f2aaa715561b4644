// A migrate between devices of one process: an in-memory channel with migrate() at one end and receive() at the other.
import { migrate, type MigrateOptions, type MigrateResult } from './migrate';
import { receive, type ReceiveOptions, type ReceiveResult } from './receive';
import type { Migration } from './session';
import { markInProcess, type Channel } from './wire';

/**
 * Two channel ends joined back to back in memory, marked as such (isInProcess): a stream between
 * them carries no payload checksums. The readable sides are in object mode: each
 * written chunk comes out as it went in, never concatenated with its neighbours (a byte-mode
 * PassThrough copies a frame's header and payload into one buffer when both wait to be read). At most four chunks wait (two frames).
 */
export function channelPair(): [Channel, Channel] {
  // Loaded here, not with the module: lib/migration's index brings this file into every command,
  // and most never migrate (node:stream is tens of ms of start-up under emulation).
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { PassThrough } = require('node:stream') as typeof import('node:stream');
  const ab = new PassThrough({ readableObjectMode: true, readableHighWaterMark: 4 });
  const ba = new PassThrough({ readableObjectMode: true, readableHighWaterMark: 4 });
  const ends: [Channel, Channel] = [
    { readable: ba, writable: ab },
    { readable: ab, writable: ba },
  ];
  ends.forEach(markInProcess);
  return ends;
}

/**
 * Migrates each pair's source into its destination, all in this process. Resolves both ends'
 * results; rejects with the first end's error to fail (the source's when both do, since it
 * names the sources' recovery and carries the destination's message).
 */
export async function migrateLocal(
  pairs: readonly (readonly [Migration, Migration])[],
  options: MigrateOptions & Pick<ReceiveOptions, 'force'> = {},
): Promise<MigrateResult & { receiver: ReceiveResult }> {
  const [a, b] = channelPair();
  const { force, ...rest } = options;
  const receiving = receive(
    pairs.map((p) => p[1]),
    b,
    // No signal: an abort at the source reaches the receiver as an ERROR frame, so the error names the source.
    { force, timeoutMs: options.timeoutMs },
  );
  receiving.catch(() => undefined);
  let sent: MigrateResult;
  try {
    sent = await migrate(
      pairs.map((p) => p[0]),
      a,
      rest,
    );
  } catch (err) {
    // The receiver resets its devices before it settles; wait for that.
    await receiving.catch(() => undefined);
    throw err;
  }
  return { ...sent, receiver: await receiving };
}
