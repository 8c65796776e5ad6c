/** Severity of a log line. */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/**
 * Structured logging as one function: `event` is a `noun:verb` name (`node:transition`),
 * `fields` its data. Roles pass their own sink (stderr JSON lines, a test buffer, nothing).
 */
export type LogFn = (level: LogLevel, event: string, fields?: Record<string, unknown>) => void;

const RANK: Readonly<Record<LogLevel, number>> = { debug: 0, info: 1, warn: 2, error: 3 };

/**
 * A LogFn writing one JSON object per line through `write` (which does the I/O), dropping lines
 * below `minLevel`. `now` gives the timestamp in ms.
 */
export function createJsonLog(write: (line: string) => void, options: { minLevel?: LogLevel; now?: () => number; name?: string } = {}): LogFn {
  const min = RANK[options.minLevel ?? 'info'];
  const now = options.now ?? Date.now;
  return (level, event, fields) => {
    if (RANK[level] < min) return;
    const line: Record<string, unknown> = { t: new Date(now()).toISOString(), level, event };
    if (options.name) line.name = options.name;
    write(`${JSON.stringify({ ...line, ...fields }, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}\n`);
  };
}

/** A LogFn that drops everything. */
export const silentLog: LogFn = () => {};
