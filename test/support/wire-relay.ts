// A migrate channel relay for failure tests: runs the receive, passes the wire protocol through, and halts it at a named moment.
//
//   node wire-relay.js MOMENT -- COMMAND [ARGS...]     (as `vfio-mig migrate A 'exec:exec node wire-relay.js ...'`)
//
// Its stdin/stdout are the source's channel; COMMAND (the receive) gets pipes of its own, and
// the relay reads the frames going each way. At MOMENT it holds the frame that marks it, stops
// reading that direction (so the source cannot get past the moment, however fast it is), and
// says on stderr `relay: at MOMENT receiver PID relay PID`, which the source relays as an
// `[exec]` line. From the moment on only ERROR frames pass (the held frame never does): at once
// in the direction still read, and in the halted one once the test, after its harm (a process
// killed, a signal sent), sends the relay SIGUSR1 to read it again. So each end learns of a
// failure as it would without the relay, and ends of stream go through; a test that never sends
// SIGUSR1 has a stalled channel. When the receive exits, so does the relay (as ssh does).
// Moments (each holds the source before the commit):
//   ready     the destination's READY: it is in RESUMING, the source has not touched a device
//   precopy   the source's first pre-copy record: its device pre-copies, the destination has only the header
//   stopcopy  the source's first stop-and-copy record: its device is stopped, the destination has none of that data
//   loaded    the destination's LOADED: every record is in, RESUMING -> STOP done; the source waits for it
import { spawn } from 'node:child_process';
import { FRAME, FRAME_HEADER_SIZE } from '../../lib/migration/wire';
import { PHASE_STOP_COPY, RECORD_HEADER } from '../../lib/migration/stream/format';

export const MOMENTS = ['ready', 'precopy', 'stopcopy', 'loaded'] as const;
export type Moment = (typeof MOMENTS)[number];

const PREAMBLE = 12;

/** Splits one direction of the wire into frames (after the 12-byte preamble). */
class FrameReader {
  #buf: Buffer = Buffer.alloc(0);
  #preamble = false;
  push(chunk: Buffer): Buffer[] {
    this.#buf = this.#buf.length ? Buffer.concat([this.#buf, chunk]) : chunk;
    const out: Buffer[] = [];
    for (;;) {
      if (this.#preamble && this.#buf.length < FRAME_HEADER_SIZE) return out;
      const need = this.#preamble ? FRAME_HEADER_SIZE + this.#buf.readUInt32LE(4) : PREAMBLE;
      if (this.#buf.length < need) return out;
      out.push(this.#buf.subarray(0, need));
      this.#buf = this.#buf.subarray(need);
      this.#preamble = true;
    }
  }
}

/** Whether `frame` (from the source) is a device-0 record of the given phase kind (not the stream header). */
function dataRecord(frame: Buffer, dataFrames: number, stopCopy: boolean): boolean {
  if (frame.length < FRAME_HEADER_SIZE || frame[0] !== FRAME.data || frame.readUInt16LE(2) !== 0) return false;
  // The first DATA frame of a device is its stream header; each later one is one record.
  if (dataFrames === 1 || frame.length < FRAME_HEADER_SIZE + RECORD_HEADER.phase + 4) return false;
  const phase = frame.readUInt32LE(FRAME_HEADER_SIZE + RECORD_HEADER.phase);
  return stopCopy ? phase === PHASE_STOP_COPY : phase !== PHASE_STOP_COPY;
}

function main(): void {
  const argv = process.argv.slice(2);
  const moment = argv[0] as Moment;
  if (!MOMENTS.includes(moment) || argv[1] !== '--' || argv.length < 3) {
    process.stderr.write(`usage: wire-relay ${MOMENTS.join('|')} -- COMMAND [ARGS...]\n`);
    process.exit(2);
  }
  const child = spawn(argv[2]!, argv.slice(3), { stdio: ['pipe', 'pipe', 'inherit'] });
  process.stderr.on('error', () => undefined);
  process.stdout.on('error', () => undefined);
  child.stdin.on('error', () => undefined);

  let halted = false;
  let dataFrames = 0;
  const toDest = new FrameReader();
  const toSource = new FrameReader();

  const halt = (paused: NodeJS.ReadableStream): void => {
    halted = true;
    paused.pause();
    process.stderr.write(`relay: at ${moment} receiver ${child.pid} relay ${process.pid}\n`);
  };
  process.on('SIGUSR1', () => {
    process.stdin.resume();
    child.stdout.resume();
  });
  // After the moment only ERROR frames pass (and the held frame never does); the halted
  // direction is not read before the release, the other one is, so an end's ERROR is never lost.
  const passes = (frame: Buffer): boolean => !halted || frame[0] === FRAME.error;

  process.stdin.on('data', (chunk: Buffer) => {
    for (const frame of toDest.push(chunk)) {
      if (!halted && frame[0] === FRAME.data && frame.readUInt16LE(2) === 0) dataFrames++;
      if (
        !halted &&
        (moment === 'precopy' || moment === 'stopcopy') &&
        dataRecord(frame, dataFrames, moment === 'stopcopy')
      ) {
        halt(process.stdin);
        continue;
      }
      if (passes(frame)) child.stdin.write(frame);
    }
  });
  process.stdin.on('end', () => child.stdin.end());
  child.stdout.on('data', (chunk: Buffer) => {
    for (const frame of toSource.push(chunk)) {
      const marks =
        (moment === 'ready' && frame[0] === FRAME.ready) || (moment === 'loaded' && frame[0] === FRAME.loaded);
      if (!halted && marks) {
        halt(child.stdout);
        continue;
      }
      if (passes(frame)) process.stdout.write(frame);
    }
  });
  // The receive is gone: what it wrote last (an ERROR) goes through, then the channel ends, as
  // ssh's does when its remote command exits.
  child.on('exit', (code, signal) => {
    process.stderr.write(`relay: receiver exited ${code} ${signal}\n`);
    child.stdout.resume();
  });
  child.on('close', () => {
    // A source that was killed leaves nobody to flush to: EPIPE ends the relay as well as 'finish'.
    const done = (): never => process.exit(0);
    process.stdout.once('error', done);
    process.stdout.end(done);
  });
}

if (require.main === module) main();
