// The clock of the times migrate() and receive() report: monotonic, to a tenth of a ms.

/**
 * Now, in ms, finer than a millisecond (Date.now() counts whole ms, 5% of a 20 ms downtime) and
 * never stepped by the wall clock. process.hrtime, not performance.now(): the first use of the
 * `performance` global loads a module.
 */
export const monotonicMs = (): number => Number(process.hrtime.bigint()) / 1e6;

/** Milliseconds between two monotonicMs() readings, one decimal (as downtimeCpuMs). */
export const spanMs = (from: number, to: number): number => Math.round((to - from) * 10) / 10;
