// A migrate between devices of one process: an in-memory channel with migrate() at one end and receive() at the other.
import { FrameQueue } from './frame-queue';
import { migrate, type MigrateOptions, type MigrateResult } from './migrate';
import { receive, type ReceiveOptions, type ReceiveResult } from './receive';
import type { Migration } from './session';
import { inProcessEnd, type Channel } from './wire';

/**
 * Two channel ends joined back to back in memory by two frame queues (isInProcess): each frame
 * goes over as the object it was sent as, its payload the very buffer (frame-queue.ts), and a
 * stream between them carries no payload checksums. For migrate(), receive() and WireEnd only:
 * the ends carry frames, not bytes.
 */
export function channelPair(): [Channel, Channel] {
  const ab = new FrameQueue();
  const ba = new FrameQueue();
  return [inProcessEnd(ba, ab), inProcessEnd(ab, ba)];
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
