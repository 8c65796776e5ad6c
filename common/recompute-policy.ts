/**
 * Limits of a RecomputePolicy, checked by the coordinator (INVALID_ARGUMENT naming the field) and
 * by the CLI before it calls (a usage error naming the flag).
 */

/** Attempts per step, first included, at most (`policy.max_attempts`). */
export const MAX_RECOMPUTE_ATTEMPTS = 100;

/**
 * Steps of one recompute job running at once, at most (`policy.concurrency`, default 16). Each
 * running step holds its inputs in the coordinator's memory and an attempt in the job manager,
 * and the agents run far fewer shards than this at a time, so more only queues work in memory.
 */
export const MAX_RECOMPUTE_CONCURRENCY = 1024;
