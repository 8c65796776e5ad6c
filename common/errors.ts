import { ClientError, ServerError, Status } from 'nice-grpc-common';

/**
 * Domain errors. Handlers throw only these; one table maps each to a gRPC status and an HTTP
 * status so both faces of the coordinator agree.
 */
export type ErrorCode =
  | 'INVALID_ARGUMENT'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'FAILED_PRECONDITION'
  | 'RESOURCE_EXHAUSTED'
  | 'INSUFFICIENT_STORAGE'
  | 'UNAUTHENTICATED'
  | 'PERMISSION_DENIED'
  | 'UNAVAILABLE'
  | 'DEADLINE_EXCEEDED'
  | 'CANCELLED'
  | 'DATA_LOSS'
  | 'INTERNAL';

/** One row per code: the gRPC status and the HTTP status it maps to. */
export const ERROR_TABLE: Readonly<Record<ErrorCode, { grpc: Status; http: number }>> = {
  INVALID_ARGUMENT: { grpc: Status.INVALID_ARGUMENT, http: 400 },
  NOT_FOUND: { grpc: Status.NOT_FOUND, http: 404 },
  ALREADY_EXISTS: { grpc: Status.ALREADY_EXISTS, http: 409 },
  FAILED_PRECONDITION: { grpc: Status.FAILED_PRECONDITION, http: 409 },
  RESOURCE_EXHAUSTED: { grpc: Status.RESOURCE_EXHAUSTED, http: 429 },
  // A full disk is RESOURCE_EXHAUSTED to gRPC clients too, but not 429 to HTTP ones: waiting
  // out a rate limit does not free a disk, and 507 is the status HTTP has for it.
  INSUFFICIENT_STORAGE: { grpc: Status.RESOURCE_EXHAUSTED, http: 507 },
  UNAUTHENTICATED: { grpc: Status.UNAUTHENTICATED, http: 401 },
  PERMISSION_DENIED: { grpc: Status.PERMISSION_DENIED, http: 403 },
  UNAVAILABLE: { grpc: Status.UNAVAILABLE, http: 503 },
  DEADLINE_EXCEEDED: { grpc: Status.DEADLINE_EXCEEDED, http: 504 },
  CANCELLED: { grpc: Status.CANCELLED, http: 499 },
  DATA_LOSS: { grpc: Status.DATA_LOSS, http: 500 },
  INTERNAL: { grpc: Status.INTERNAL, http: 500 },
};

/** Base of every error Retrace raises on purpose. `field` names the offending input, when one does. */
export class RetraceError extends Error {
  readonly code: ErrorCode;
  readonly field: string | undefined;

  constructor(code: ErrorCode, message: string, options?: { field?: string; cause?: unknown }) {
    super(options?.field ? `${options.field}: ${message}` : message, { cause: options?.cause });
    this.name = 'RetraceError';
    this.code = code;
    this.field = options?.field;
  }
}

/** Bad input; `field` is a path such as `events[3].step.used[0].content_hash`. */
export class InvalidArgumentError extends RetraceError {
  constructor(field: string, message: string, cause?: unknown) {
    super('INVALID_ARGUMENT', message, { field, cause });
    this.name = 'InvalidArgumentError';
  }
}

export class NotFoundError extends RetraceError {
  /** `context` follows "not found" (`at as_of_ns …`: where or when it was looked for). */
  constructor(what: string, field?: string, context?: string) {
    super('NOT_FOUND', `${what} not found${context ? ` ${context}` : ''}`, field === undefined ? {} : { field });
    this.name = 'NotFoundError';
  }
}

export class FailedPreconditionError extends RetraceError {
  constructor(message: string, field?: string) {
    super('FAILED_PRECONDITION', message, field === undefined ? {} : { field });
    this.name = 'FailedPreconditionError';
  }
}

export class UnavailableError extends RetraceError {
  constructor(message: string, cause?: unknown) {
    super('UNAVAILABLE', message, { cause });
    this.name = 'UnavailableError';
  }
}

/**
 * A write refused because the data dir's file system is full (ENOSPC, EDQUOT); nothing of it
 * was stored. `dir` names the data dir.
 */
export class InsufficientStorageError extends RetraceError {
  readonly dir: string;

  constructor(dir: string, cause?: unknown) {
    super('INSUFFICIENT_STORAGE', `the data dir ${dir} is out of space: nothing of this write was stored; writes resume once space is freed there`, { cause });
    this.name = 'InsufficientStorageError';
    this.dir = dir;
  }
}

export class DataLossError extends RetraceError {
  constructor(message: string) {
    super('DATA_LOSS', message);
    this.name = 'DataLossError';
  }
}

export function isRetraceError(err: unknown): err is RetraceError {
  return err instanceof RetraceError;
}

/**
 * Most characters of a status message: it travels in a trailer, and one that echoed a 100k
 * character id made the client's channel stop answering.
 */
export const MAX_STATUS_MESSAGE_CHARS = 1024;

/** Server side: a domain error becomes its gRPC status; anything else is for the caller to log and hide. */
export function toServerError(err: RetraceError): ServerError {
  const m = err.message;
  const message = m.length <= MAX_STATUS_MESSAGE_CHARS ? m : `${m.slice(0, MAX_STATUS_MESSAGE_CHARS - 40)}… (${m.length} characters in all)`;
  return new ServerError(ERROR_TABLE[err.code].grpc, message);
}

const codeByStatus = new Map<Status, ErrorCode>();
// Where two codes share a status (RESOURCE_EXHAUSTED), the first row is the one a client hears.
for (const [code, row] of Object.entries(ERROR_TABLE) as [ErrorCode, { grpc: Status }][]) if (!codeByStatus.has(row.grpc)) codeByStatus.set(row.grpc, code);

/** The domain code of a gRPC status code; INTERNAL for codes no domain error maps to. */
export function errorCodeOfStatus(status: number): ErrorCode {
  return codeByStatus.get(status as Status) ?? 'INTERNAL';
}

/** Client side: a gRPC status becomes the matching typed error, keeping the original as `cause`. */
export function fromClientError(err: unknown): unknown {
  if (!(err instanceof ClientError)) return err;
  return new RetraceError(errorCodeOfStatus(err.code), err.details, { cause: err });
}

/** HTTP status and JSON body for an error on the HTTP face. */
export function toHttpError(err: RetraceError): { status: number; body: { error: ErrorCode; message: string; field?: string } } {
  const body: { error: ErrorCode; message: string; field?: string } = { error: err.code, message: err.message };
  if (err.field !== undefined) body.field = err.field;
  return { status: ERROR_TABLE[err.code].http, body };
}
