// The clock of the times the library reports (migrate, receive, save, load, the checker): monotonic, and how spans are rounded.

/**
 * Now, in ms, finer than a millisecond (Date.now() counts whole ms, 5% of a 20 ms downtime) and
 * never stepped by the wall clock. process.hrtime, not performance.now(): the first use of the
 * `performance` global loads a module.
 */
export const monotonicMs = (): number => Number(process.hrtime.bigint()) / 1e6;

/** Milliseconds to one decimal, as migrate's and receive's times (and downtimeCpuMs) are given. */
export const tenths = (ms: number): number => Math.round(ms * 10) / 10;

/** Milliseconds between two monotonicMs() readings, one decimal. */
export const spanMs = (from: number, to: number): number => tenths(to - from);

/** Whole milliseconds since a monotonicMs() reading (save's and load's times, the checker's). */
export const msSince = (from: number): number => Math.round(monotonicMs() - from);
