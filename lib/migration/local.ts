// A migrate between devices of one process: an in-memory channel with migrate() at one end and receive() at the other.
import { MemoryPipe } from './memory-pipe';
import { migrate, type MigrateOptions, type MigrateResult } from './migrate';
import { receive, type ReceiveOptions, type ReceiveResult } from './receive';
import type { Migration } from './session';
import { markInProcess, type Channel } from './wire';

/**
 * Two channel ends joined back to back in memory (MemoryPipe), marked as such (isInProcess): a
 * stream between them carries no payload checksums. Each written chunk comes out as it went in
 * (the same object, never concatenated with its neighbours), and at most MEMORY_PIPE_CHUNKS wait
 * (two frames) before a write is held back.
 */
export function channelPair(): [Channel, Channel] {
  const ab = new MemoryPipe();
  const ba = new MemoryPipe();
  // A MemoryPipe has the part of a Writable that WireEnd uses (write, end, destroy, drain, close).
  const writable = (p: MemoryPipe) => p as unknown as NodeJS.WritableStream;
  const ends: [Channel, Channel] = [
    { readable: ba, writable: writable(ab) },
    { readable: ab, writable: writable(ba) },
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
