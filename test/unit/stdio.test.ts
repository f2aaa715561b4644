// Host tests of the CLI's output (cli/stdio.ts): text by write(2) without Node's stdio streams, the stream only on demand, EAGAIN and EPIPE.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { StdioText } from '../../cli/stdio';
import { ProgressView } from '../../cli/progress';
import { native } from '../../lib/native';
import { spawnWithBuiltins } from '../support/builtins-probe';

/** A FIFO's two ends, the write end non-blocking (as a parent may leave an inherited pipe). */
function fifo(): { read: number; write: number; done(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-stdio-'));
  const path = join(dir, 'fifo');
  execFileSync('mkfifo', [path]);
  const read = openSync(path, constants.O_RDWR | constants.O_NONBLOCK);
  const write = openSync(path, constants.O_WRONLY | constants.O_NONBLOCK);
  return {
    read,
    write,
    done: () => {
      closeSync(read);
      closeSync(write);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Reads what the FIFO holds now. */
function drain(fd: number): Buffer {
  const parts: Buffer[] = [];
  const buf = Buffer.alloc(1 << 16);
  for (;;) {
    let n = 0;
    try {
      n = readSync(fd, buf, 0, buf.length, null);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EAGAIN') break;
      throw err;
    }
    if (n === 0) break;
    parts.push(Buffer.from(buf.subarray(0, n)));
  }
  return Buffer.concat(parts);
}

/** A stand-in for Node's stream: what it was given, and whether it was made at all. */
function fakeStream() {
  const got: string[] = [];
  let made = 0;
  const make = () => {
    made++;
    return { write: (b: string | Uint8Array) => got.push(Buffer.from(b).toString()) } as unknown as NodeJS.WriteStream;
  };
  return { got, make, made: () => made };
}

test('StdioText: text goes out by write(2), and no stream is made for it', () => {
  const f = fifo();
  try {
    const stream = fakeStream();
    const out = new StdioText(f.write, stream.make);
    out.write('one\n');
    out.write('two é\n');
    assert.equal(drain(f.read).toString(), 'one\ntwo é\n');
    assert.equal(stream.made(), 0);
  } finally {
    f.done();
  }
});

test('StdioText: a full non-blocking pipe (EAGAIN) hands the text to the stream, and all later text, in order', () => {
  const f = fifo();
  try {
    const filler = Buffer.alloc(4096, 0x61);
    let filled = 0;
    for (;;) {
      try {
        filled += writeSync(f.write, filler);
      } catch (err) {
        assert.equal((err as NodeJS.ErrnoException).code, 'EAGAIN');
        break;
      }
    }
    const stream = fakeStream();
    const out = new StdioText(f.write, stream.make);
    out.write('first\n');
    out.write('second\n');
    assert.equal(stream.made(), 1);
    assert.deepEqual(stream.got, ['first\n', 'second\n']);
    assert.equal(drain(f.read).length, filled, 'nothing of the text went into the pipe behind the stream');
  } finally {
    f.done();
  }
});

test('StdioText: a reader gone (EPIPE) loses the text without an error or a stream', () => {
  const f = fifo();
  closeSync(f.read);
  try {
    const stream = fakeStream();
    const out = new StdioText(f.write, stream.make);
    assert.doesNotThrow(() => out.write('nobody reads this\n'));
    assert.equal(stream.made(), 0);
  } finally {
    closeSync(f.write);
  }
});

test('host: a short command loads neither node:net nor the stream modules (stdout a pipe, as under a script)', () => {
  // Preloaded: prints at exit the builtins loaded after Node's own start-up.
  for (const args of [['--version'], ['list', '--no-probe', '--json'], ['state', '0000:ff:1f.7']]) {
    const r = spawnWithBuiltins(args);
    assert.ok(r.loaded('vm'), `${args.join(' ')}: the probe saw the bundle load (${r.stderr})`);
    for (const m of ['net', 'stream', 'tty']) assert.ok(!r.loaded(m), `${args.join(' ')} loaded node:${m}`);
    assert.ok(r.stdout.length || r.stderr.includes('0000:ff:1f.7'), `${args.join(' ')} printed its result`);
  }
});

test('host: native.isatty: a pipe is not a terminal, a pseudo-terminal is (what progress asks of stderr)', () => {
  const f = fifo();
  const pty = openSync('/dev/ptmx', constants.O_RDWR | constants.O_NOCTTY);
  try {
    assert.equal(native.isatty(f.write), false);
    assert.equal(native.isatty(pty), true);
  } finally {
    closeSync(pty);
    f.done();
  }
});

test('ProgressView: one line per phase through io.err when stderr is not a terminal; a redrawn bar when it is; nothing when quiet', () => {
  const progress = (phase: 'precopy' | 'stop-copy' | 'done', iteration: number, bytes: number) => ({
    phase,
    iteration,
    bytes,
    pendingBytes: phase === 'done' ? 0n : 1024n,
    elapsedMs: 100,
    throughput: 1 << 20,
  });
  const steps = [
    progress('precopy', 0, 10),
    progress('precopy', 0, 20),
    progress('stop-copy', 0, 30),
    progress('done', 0, 40),
  ];
  const run = (errIsTerminal: boolean, quiet = false): string => {
    const got: string[] = [];
    const view = new ProgressView({ err: (t) => got.push(t), errIsTerminal }, { quiet });
    for (const p of steps) view.update(p);
    view.finish();
    return got.join('');
  };
  const lines = run(false);
  assert.deepEqual(
    lines
      .split('\n')
      .filter(Boolean)
      .map((l) => l.split(':')[0]),
    ['pre-copy #1', 'stop-copy', 'done'],
    lines,
  );
  assert.ok(!lines.includes('\r'));
  const bar = run(true);
  assert.equal(bar.split('\r\x1b[K').length - 1, steps.length, 'every update redraws the line');
  assert.ok(bar.endsWith('\n'), 'the bar ends with a newline');
  assert.equal(run(true, true), '');
  assert.equal(run(false, true), '');
});
