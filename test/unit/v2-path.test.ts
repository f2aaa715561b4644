// Unit tests of the v2 client's FSM path computation against tables written by hand from linux/vfio.h's rules (pure logic, no kernel).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { v2Path, v2StateName } from '../../lib/migration/v2';

const R = 2,
  S = 1,
  SC = 3,
  RS = 4,
  RP = 5,
  PC = 6,
  PP = 7;
const ALL = [S, R, SC, RS, RP, PC, PP];

/** from -> to -> expected path (null: refused). Pairs not listed with from === to give []. */
const FULL: Record<number, Record<number, number[] | null>> = {
  [R]: { [S]: [RP, S], [SC]: [RP, S, SC], [RS]: [RP, S, RS], [RP]: [RP], [PC]: [PC], [PP]: [RP, PP] },
  [S]: { [R]: [RP, R], [SC]: [SC], [RS]: [RS], [RP]: [RP], [PC]: [RP, R, PC], [PP]: [RP, PP] },
  [SC]: { [S]: [S], [R]: [S, RP, R], [RS]: [S, RS], [RP]: [S, RP], [PC]: null, [PP]: null },
  [RS]: { [S]: [S], [R]: [S, RP, R], [SC]: [S, SC], [RP]: [S, RP], [PC]: [S, RP, R, PC], [PP]: [S, RP, PP] },
  [RP]: { [S]: [S], [R]: [R], [SC]: [S, SC], [RS]: [S, RS], [PC]: [R, PC], [PP]: [PP] },
  [PC]: { [R]: [R], [S]: [R, RP, S], [SC]: [PP, SC], [RS]: [R, RP, S, RS], [RP]: [R, RP], [PP]: [PP] },
  [PP]: { [R]: [RP, R], [S]: [RP, S], [SC]: [SC], [RS]: [RP, S, RS], [RP]: [RP], [PC]: [PC] },
};

const STOP_COPY_ONLY: Record<number, Record<number, number[] | null>> = {
  [R]: { [S]: [S], [SC]: [S, SC], [RS]: [S, RS] },
  [S]: { [R]: [R], [SC]: [SC], [RS]: [RS] },
  [SC]: { [S]: [S], [R]: [S, R], [RS]: [S, RS] },
  [RS]: { [S]: [S], [R]: [S, R], [SC]: [S, SC] },
};

const PRECOPY_NO_P2P: Record<number, Record<number, number[] | null>> = {
  [R]: { [S]: [S], [SC]: [S, SC], [RS]: [S, RS], [PC]: [PC] },
  [S]: { [R]: [R], [SC]: [SC], [RS]: [RS], [PC]: [R, PC] },
  [SC]: { [S]: [S], [R]: [S, R], [RS]: [S, RS], [PC]: null },
  [RS]: { [S]: [S], [R]: [S, R], [SC]: [S, SC], [PC]: [S, R, PC] },
  [PC]: { [R]: [R], [S]: [R, S], [SC]: [SC], [RS]: [R, S, RS] },
};

function check(
  table: Record<number, Record<number, number[] | null>>,
  support: { p2p: boolean; preCopy: boolean },
  states: number[],
) {
  for (const from of states) {
    for (const to of states) {
      const expected = from === to ? [] : table[from]?.[to];
      assert.notEqual(expected, undefined, `table has ${v2StateName(from)} -> ${v2StateName(to)}`);
      const got = v2Path(from, to, support);
      assert.deepEqual(
        got?.map(v2StateName) ?? null,
        expected?.map(v2StateName) ?? null,
        `${v2StateName(from)} -> ${v2StateName(to)}`,
      );
    }
  }
}

test('every (from, to) pair with STOP_COPY | P2P | PRE_COPY', () => check(FULL, { p2p: true, preCopy: true }, ALL));
test('every pair with STOP_COPY only: P2P states fold into RUNNING', () =>
  check(STOP_COPY_ONLY, { p2p: false, preCopy: false }, [S, R, SC, RS]));
test('every pair with STOP_COPY | PRE_COPY, no P2P', () =>
  check(PRECOPY_NO_P2P, { p2p: false, preCopy: true }, [S, R, SC, RS, PC]));
test('every pair with STOP_COPY | P2P: the full table minus PRE_COPY states', () =>
  check(FULL, { p2p: true, preCopy: false }, [S, R, SC, RS, RP]));
test('unsupported targets and ERROR are refused', () => {
  assert.equal(v2Path(R, RP, { p2p: false, preCopy: false }), null);
  assert.equal(v2Path(R, PC, { p2p: true, preCopy: false }), null);
  assert.equal(v2Path(R, 0, { p2p: true, preCopy: true }), null);
});

test('a path is computed once per support and returned frozen, so no caller can change the next one', () => {
  const support = { p2p: true, preCopy: true };
  const first = v2Path(PC, SC, support);
  assert.deepEqual(first, [PP, SC]);
  assert.equal(v2Path(PC, SC, { ...support }), first, 'the same array for equal flags');
  assert.ok(Object.isFrozen(first));
  assert.throws(() => (first as number[]).push(R), TypeError);
  assert.deepEqual(v2Path(PC, SC, support), [PP, SC]);
  // Other flags have their own answers: without P2P the path goes straight to STOP_COPY.
  assert.deepEqual(v2Path(PC, SC, { p2p: false, preCopy: true }), [SC]);
  // States outside a byte are refused, not remembered under a colliding key.
  assert.equal(v2Path(R, 0x102, support), null);
  assert.deepEqual(v2Path(R, S, support), [RP, S]);
});
