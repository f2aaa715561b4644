// The CLI's stdout and stderr: text written at once with write(2); Node's stream for an fd made only when a command needs one.
import { writeSync } from 'node:fs';
import { native } from '../lib/native';
import type { Io } from './commands';

// Node's process.stdout and process.stderr are built on first access: for a pipe a net.Socket,
// for a file a stream, which loads `net` and the stream modules (35-55 ms of a short command's
// start-up in the guest, measured in process; CHANGELOG). Most commands only print a few lines,
// so text goes out with write(2) and a stream is made only for what needs one: a stream channel
// (`save -o -`, `receive`) or text that would block (below). Progress is text too: whether
// stderr is a terminal is asked of the kernel (isatty), not of Node's tty module, which loads net.

/** One of the process's output fds: text at once, the stream on demand. */
export class StdioText {
  readonly #fd: number;
  readonly #made: () => NodeJS.WriteStream;
  #stream: NodeJS.WriteStream | undefined;

  /** `made` returns Node's stream for `fd` (process.stdout for 1, process.stderr for 2). */
  constructor(fd: number, made: () => NodeJS.WriteStream) {
    this.#fd = fd;
    this.#made = made;
  }

  /** Node's stream for the fd, made on first use; from then on text goes through it too, in order. */
  get stream(): NodeJS.WriteStream {
    return (this.#stream ??= this.#made());
  }

  /**
   * Writes `text`. Without a stream yet: write(2), to the end. An fd in non-blocking mode (a
   * pipe the parent made so) may refuse with EAGAIN: the rest goes to the stream, which waits
   * for room, and so does all text after it. A reader gone (EPIPE) loses the text silently, as
   * the stream would: the command's result does not depend on who reads its report.
   */
  write(text: string): void {
    if (this.#stream) {
      this.#stream.write(text);
      return;
    }
    const bytes = Buffer.from(text);
    let done = 0;
    try {
      while (done < bytes.length) done += writeSync(this.#fd, bytes, done);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') this.stream.write(bytes.subarray(done));
      else if (code !== 'EPIPE') throw err;
    }
  }
}

/** The Io of this process: fds 1 and 2, their streams made on first use (stdout's stream errors ignored). */
export function processIo(): Io {
  const stdout = new StdioText(1, () => {
    const stream = process.stdout;
    // A closed pipe downstream (ssh gone) is a stream failure, reported by save itself.
    stream.on('error', () => undefined);
    return stream;
  });
  const stderr = new StdioText(2, () => process.stderr);
  let errIsTerminal: boolean | undefined;
  return {
    out: (text) => stdout.write(text),
    err: (text) => stderr.write(text),
    get stdout() {
      return stdout.stream;
    },
    get errIsTerminal() {
      return (errIsTerminal ??= native.isatty(2));
    },
  };
}
