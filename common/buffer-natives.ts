/**
 * Buffer's native string methods that its public ones call after parsing their arguments, which
 * for the short strings of ids and hashes cost about as much as the work. Node's own Buffer
 * methods call them this way; they are not in the typings.
 */

/** What `toString('latin1', start, end)` calls. */
export interface Latin1Slicer {
  latin1Slice(start: number, end: number): string;
}

/** What `write(s, offset, room, 'utf8')` calls; answers the bytes written. */
export interface Utf8Writer {
  utf8Write(value: string, offset: number, room: number): number;
}
