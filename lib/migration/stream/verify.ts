// verifyStream: decodes a whole stream offline, checking everything a load would, and summarises it.
import { StreamDecoder, type StreamDecoderOptions } from './decoder';
import type { StreamHeader } from './header';
import type { StreamSource } from './reader';

export interface VerifyOptions extends StreamDecoderOptions {
  /** Stops the verification between records, rejecting with the signal's reason. */
  signal?: AbortSignal;
}

export interface VerifyResult {
  header: StreamHeader;
  records: bigint;
  payloadBytes: bigint;
  /** One entry per phase, in the order of their first record. */
  phases: { phase: number; records: number; bytes: bigint }[];
  streamBytes: bigint;
}

/** Decodes a whole stream, checking everything the loader would, and summarises it. */
export async function verifyStream(source: StreamSource, options: VerifyOptions = {}): Promise<VerifyResult> {
  const { signal, ...decoderOptions } = options;
  signal?.throwIfAborted();
  const decoder = new StreamDecoder(source, decoderOptions);
  const phases = new Map<number, { phase: number; records: number; bytes: bigint }>();
  const header = await decoder.readHeader();
  for await (const { phase, payload } of decoder.records()) {
    signal?.throwIfAborted();
    let entry = phases.get(phase);
    if (entry === undefined) phases.set(phase, (entry = { phase, records: 0, bytes: 0n }));
    entry.records++;
    entry.bytes += BigInt(payload.length);
  }
  const totals = decoder.totals!;
  return {
    header,
    records: totals.records,
    payloadBytes: totals.payloadBytes,
    phases: [...phases.values()],
    streamBytes: BigInt(decoder.bytesRead),
  };
}
