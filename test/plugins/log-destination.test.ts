import { test } from 'tap'
import { execFileSync, fork } from 'node:child_process'
import { createReadStream, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { LOG_BUFFER_MAX, LOG_FLUSH_MS } from '../../plugins/logging.js'

const WRITER = fileURLToPath(new URL('../support/log-writer.ts', import.meta.url))

function lines (file: string): string[] {
  return readFileSync(file, 'utf8').split('\n').filter((line) => line !== '').map((line) => (JSON.parse(line) as { msg: string }).msg)
}

async function run (file: string, mode: string, count = 0): Promise<{ code: number | null, signal: string | null }> {
  const child = fork(WRITER, [file, mode, String(count)], { execArgv: process.execArgv, stdio: ['ignore', 'ignore', 'ignore', 'ipc'] })
  if (mode === 'wait') {
    await new Promise((resolve) => child.once('message', resolve))
    // Past the flush interval, with room to spare on a busy machine; then no chance to write anything.
    await new Promise((resolve) => setTimeout(resolve, LOG_FLUSH_MS * 4))
    child.kill('SIGKILL')
  }
  return await new Promise((resolve) => child.once('exit', (code, signal) => { resolve({ code, signal }) }))
}

test('buffered log lines are never lost: written at exit, after an uncaught error, or within the flush interval', async (t) => {
  const dir = t.testdir({})
  for (const [mode, ended] of [['exit', { code: 0 }], ['throw', { code: 1 }], ['wait', { signal: 'SIGKILL' }]] as const) {
    const file = join(dir, `${mode}.log`)
    t.match(await run(file, mode), ended, `${mode}: the process ended as told`)
    t.same(lines(file), ['first line', 'second line'], `${mode}: both lines are in the file, in order`)
  }
})

/** The writer logging to a pipe its parent closed at once; told to end `afterMs` after it logged. */
async function logIntoClosedPipe (afterMs: number): Promise<{ ended: unknown, stderr: string }> {
  const child = fork(WRITER, ['', 'gone'], { execArgv: process.execArgv, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] })
  child.stdout!.destroy()
  let stderr = ''
  child.stderr!.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  await new Promise((resolve) => child.once('message', resolve))
  await new Promise((resolve) => setTimeout(resolve, afterMs))
  child.send('exit')
  const ended = await new Promise((resolve) => child.once('exit', (code, signal) => { resolve({ code, signal }) }))
  return { ended, stderr }
}

test('a destination that can no longer be written (a pipe whose reader left) does not turn a clean exit into a crash', async (t) => {
  const atExit = await logIntoClosedPipe(0)
  t.same(atExit.ended, { code: 0, signal: null }, 'found out at exit: a clean exit still')
  t.notMatch(atExit.stderr, /EPIPE|Error/, 'nothing thrown on the way out')

  const before = await logIntoClosedPipe(LOG_FLUSH_MS * 4)
  t.same(before.ended, { code: 0, signal: null }, 'found out by a periodic write: the process went on, and exits cleanly')
  t.match(before.stderr, /^rotor: the log destination failed \(EPIPE[^\n]*\): nothing more is logged\n$/, 'said once, on stderr')
})

/** Lines each writer of the shared pipe logs, about 200 bytes each. */
const MANY_LINES = 20_000

test('processes sharing one pipe (WORKERS > 1 on one standard output) never split each other\'s lines', async (t) => {
  // Writes of at most PIPE_BUF bytes to a pipe are atomic; longer ones are not, and two writers
  // whose chunks land in a full pipe interleave mid-line. A FIFO shared by two writers that log
  // fast and flush at exit, with a reader that drains it slowly: every line must come out whole
  // (written as a `shared` destination: unshared, 3 runs of 3 split lines).
  const fifo = join(t.testdir({}), 'log.fifo')
  execFileSync('mkfifo', [fifo])
  const chunks: Buffer[] = []
  // Small reads, and none at first: the pipe fills, and both writers wait on it mid-chunk.
  const reader = createReadStream(fifo, { highWaterMark: 1024 })
  reader.pause()
  reader.on('data', (chunk) => { chunks.push(chunk as Buffer) })
  setTimeout(() => { reader.resume() }, 500)
  const read = new Promise<void>((resolve) => reader.once('close', () => { resolve() }))
  const writers = [0, 1].map(async () => await run(fifo, 'many', MANY_LINES))
  t.same(await Promise.all(writers), [{ code: 0, signal: null }, { code: 0, signal: null }], 'both writers exited cleanly')
  await read
  const text = Buffer.concat(chunks).toString()
  t.ok(text.endsWith('\n'), 'the last line is whole')
  const split = text.split('\n').slice(0, -1).filter((line) => {
    try {
      JSON.parse(line)
      return false
    } catch {
      return true
    }
  })
  t.equal(split.length, 0, 'no line was split by the other writer\'s')
  t.equal(text.split('\n').length - 1, 2 * MANY_LINES, 'every line of both writers arrived')
})

test('a destination that stops taking lines holds at most LOG_BUFFER_MAX of them: later ones are dropped and counted, and the rest arrive once it takes them again', async (t) => {
  const fifo = join(t.testdir({}), 'log.fifo')
  execFileSync('mkfifo', [fifo])
  // About 90 MB of lines into a pipe nobody reads yet: more than five times what may wait.
  const count = 450_000
  let received = ''
  const reader = createReadStream(fifo)
  reader.pause()
  reader.on('data', (chunk) => { received += chunk.toString() })
  const child = fork(WRITER, [fifo, 'stalled', String(count)], { execArgv: [...process.execArgv, '--expose-gc'], stdio: ['ignore', 'ignore', 'inherit', 'ipc'] })
  const report = await new Promise<{ dropped: number, arrayBuffers: number }>((resolve) => child.once('message', resolve))
  t.ok(report.dropped > 0 && report.dropped < count, `lines past the limit were dropped and counted (${report.dropped} of ${count})`)
  // What may wait, and what the Buffer pool's slabs around it hold, not the 90 MB.
  t.ok(report.arrayBuffers < 2 * LOG_BUFFER_MAX, `the buffers held ${(report.arrayBuffers / 2 ** 20).toFixed(1)} MiB, not every line`)

  // Read again: every line that was kept arrives, whole and in order, before the writer is told to exit.
  reader.resume()
  const kept = count - report.dropped
  while (received.split('\n').length - 1 < kept) await new Promise((resolve) => setTimeout(resolve, 50))
  const numbers = received.split('\n').slice(0, -1).map((line) => (JSON.parse(line) as { n: number }).n)
  t.same(numbers, Array.from({ length: kept }, (_, i) => i + 1), 'the first lines, all of them, in order: the dropped ones are the last')
  const ended = new Promise((resolve) => child.once('exit', (code, signal) => { resolve({ code, signal }) }))
  child.send('exit')
  t.same(await ended, { code: 0, signal: null }, 'the writer went on and exits cleanly')
  reader.destroy()
})
