import type { FastifyReply, FastifyRequest } from 'fastify'
import { LogController } from 'fastify'
import type { DestinationStream } from 'pino'
import sonicBoom, { type SonicBoomOpts } from 'sonic-boom'

/**
 * Paths of the serialized request and answer that could carry a secret: pino replaces them with
 * "[redacted]". Rotor's own log lines name tokens by `jti` only; these catch what Fastify or a
 * plugin might log. Names at any place one level down are censored by {@link censorSecrets}.
 */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["x-api-key"]',
  'res.headers["set-cookie"]'
]

/** Property names whose value is never logged, at the top of a line or one level down. */
const SECRET_NAMES = new Set(['token', 'refresh_token', 'access_token', 'refresh', 'access', 'apiKey', 'secret', 'body'])
const CENSORED = '[redacted]'

/**
 * Whether a member's value is an object that names a secret: a plain object or an Error. Other
 * instances (Fastify's request and reply) go through their serializers, which pick safe fields.
 */
function hasSecret (value: unknown): value is object {
  if (typeof value !== 'object' || value === null) return false
  const proto: unknown = Object.getPrototypeOf(value)
  if (proto !== Object.prototype && proto !== null && !(value instanceof Error)) return false
  for (const name of Object.keys(value)) if (SECRET_NAMES.has(name)) return true
  return false
}

/** A copy of an object with its secret-named members censored; an Error's copy is still one of its class, message and stack included. */
function censored (value: object): Record<string, unknown> {
  const copy: Record<string, unknown> = value instanceof Error
    ? Object.assign(Object.create(Object.getPrototypeOf(value) as object) as Record<string, unknown>, { message: value.message, stack: value.stack })
    : {}
  for (const [name, member] of Object.entries(value)) copy[name] = SECRET_NAMES.has(name) ? CENSORED : member
  return copy
}

/**
 * What pino logs of a line's own object (its `formatters.log`): members named like a secret
 * (`token`, `refresh_token`, `body`, …) censored at the top and one level down, as the wildcard
 * paths `*.token` would, at a fraction of their cost (pino's wildcard redaction walked every line:
 * more than the line itself). The object is copied only when something is censored.
 */
export function censorSecrets (line: Record<string, unknown>): Record<string, unknown> {
  let out = line
  for (const name of Object.keys(line)) {
    const value = line[name]
    const secret = SECRET_NAMES.has(name)
    const nested = !secret && hasSecret(value)
    if (!secret && !nested) continue
    if (out === line) out = { ...line }
    out[name] = secret ? CENSORED : censored(value as object)
  }
  return out
}

/**
 * Anything shaped like a compact JWS: three base64url segments, the first two of four characters
 * or more (so that addresses and version numbers stay readable). A token may arrive where no
 * redaction path can see it: in a URL's path or query, or as a JSON property name that a
 * validation message repeats.
 */
const TOKEN_SHAPED = /[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*/g

/** `text` with every token-shaped run replaced by `[token]`: for URLs and messages that may echo input. */
export function scrubTokens (text: string): string {
  return text.replace(TOKEN_SHAPED, '[token]')
}

/** The request as the log shows it: Fastify's default fields, the URL scrubbed of tokens. */
export function serializeRequest (request: FastifyRequest): Record<string, unknown> {
  return { method: request.method, url: scrubTokens(request.url), host: request.host, remoteAddress: request.ip, remotePort: request.socket.remotePort }
}

/**
 * Fastify's per-request lines ("incoming request", "request completed") at `debug`, so that the
 * default `info` has one line per token event and none per request; an answer of 400 or more still
 * gets its completion line at `info` (method, URL, status, time), next to the line that says why.
 */
export class RequestLogController extends LogController {
  override incomingRequest (request: FastifyRequest): void {
    request.log.debug({ req: request }, 'incoming request')
  }

  override requestCompleted (error: Error | null | undefined, request: FastifyRequest, reply: FastifyReply): void {
    /* c8 ignore next: an answer's stream failing mid-write (Node's 'error' on the response); Fastify's own line, kept */
    if (error !== null && error !== undefined) reply.log.error({ req: request, res: reply, err: error, responseTime: reply.elapsedTime }, 'request errored')
    else if (reply.statusCode >= 400) reply.log.info({ req: request, res: reply, responseTime: reply.elapsedTime }, 'request completed')
    else reply.log.debug({ res: reply, responseTime: reply.elapsedTime }, 'request completed')
  }
}

/** The most bytes a write to a pipe carries whole, never mixed with another process's (POSIX: at least 512; Linux: 4096). */
const PIPE_BUF = 4096

/** How long a log line may wait in the buffer before it is written (ms). */
export const LOG_FLUSH_MS = 250

/**
 * The most a log buffer holds (bytes) while its destination does not take it (a stalled pipe, a
 * log driver that blocks): past it, lines are dropped and counted, not kept until the process runs
 * out of memory. About 80,000 lines; at a few thousand lines a second, half a minute of them.
 */
export const LOG_BUFFER_MAX = 16 * 1024 * 1024

export interface BufferedDestination {
  /** Where pino writes. */
  stream: DestinationStream
  /** Writes what is buffered, synchronously; the process's exit does it too. */
  stop: () => void
  /** Called for every line dropped because LOG_BUFFER_MAX bytes were waiting (the service counts them in /metrics). */
  onDrop: (listener: () => void) => void
}

/**
 * Where Rotor's process logs (src/server.ts): a file descriptor or a file, written off the
 * request's path. Lines gather in a buffer (sonic-boom, pino's own destination, asynchronous) and
 * leave once 4 KiB wait or every LOG_FLUSH_MS, whichever comes first, in writes of whole lines
 * (up to 16 KiB). `shared`: other processes write to the same destination (WORKERS > 1: one
 * standard output); writes then carry at most PIPE_BUF bytes, begun once 3 KiB wait: such a write
 * to a pipe is atomic, so no process splits another's lines (a single line longer than that
 * excepted; 16 KiB writes did split them when the pipe was full). It costs 2 to 5 % of a refresh's
 * CPU on one core (twice the writes), which is why a lone process does not pay it. A destination
 * that stops taking lines costs at most LOG_BUFFER_MAX of memory; later lines are dropped (and
 * counted) until it takes them again, and the service goes on. What is still
 * buffered when the process exits (an error included) is written synchronously then. A SIGKILL
 * loses at most the last LOG_FLUSH_MS.
 *
 * sonic-boom 5 rather than pino.destination() (sonic-boom 4): at exit, 4 retried a write to a pipe
 * whose reader had left (EPIPE) forever, and the process never exited. Here such a destination
 * ends logging, said once on stderr; the service goes on. `stop` writes what is left.
 */
export function bufferedDestination (dest: number | string, options: { shared?: boolean } = {}): BufferedDestination {
  // maxWriteRetries (missing from sonic-boom's types): a full pipe at exit is retried for 2 s at most.
  // Buffers, not strings: a string buffer is measured again (flattened, UTF-8 counted) for every
  // line and encoded twice per write; one Buffer per line costs a third of that (about 1 µs a line).
  const sizes = options.shared === true ? { minLength: 3 * 1024, maxWrite: PIPE_BUF } : { minLength: 4096 }
  const boom: SonicBoomOpts & { maxWriteRetries: number } = {
    dest, sync: false, ...sizes, maxLength: LOG_BUFFER_MAX, periodicFlush: LOG_FLUSH_MS, maxWriteRetries: 20, contentMode: 'buffer'
  }
  const stream = new sonicBoom.SonicBoom(boom)
  const dropListeners: Array<() => void> = []
  stream.on('drop', () => { for (const listener of dropListeners) listener() })
  // In contentMode 'buffer' sonic-boom takes Buffers (its types know strings only).
  const writeBuffer = stream.write.bind(stream) as unknown as (chunk: Buffer) => boolean
  let broken = false
  stream.on('error', (error: Error) => {
    if (broken) return
    broken = true
    process.stderr.write(`rotor: the log destination failed (${error.message}): nothing more is logged\n`)
  })
  const flushNow = (): void => {
    if (broken) return
    try {
      stream.flushSync()
    } catch {
      // Nothing to write to any more (a pipe whose reader left): nothing to do about it while exiting.
    }
  }
  process.on('exit', flushNow)
  return {
    stream: { write: (line: string) => { if (!broken) writeBuffer(Buffer.from(line)) } },
    stop: () => {
      process.off('exit', flushNow)
      flushNow()
    },
    onDrop: (listener) => { dropListeners.push(listener) }
  }
}
