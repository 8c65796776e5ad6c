/**
 * TEST ONLY. Lets a crash test kill the coordinator at one exact point of a multi-step write
 * (a point no timing could hit reliably): when the environment variable `RETRACE_TEST_CRASH_AT`
 * names `point`, the process SIGKILLs itself there, as `kill -9` would, with nothing flushed or
 * closed. Unset (always, outside tests) it does nothing.
 */
export function crashPointForTests(point: string): void {
  if (process.env.RETRACE_TEST_CRASH_AT === point) process.kill(process.pid, 'SIGKILL');
}
