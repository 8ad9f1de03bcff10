import { test } from 'tap'
import { fork } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { LOG_FLUSH_MS } from '../../plugins/logging.js'

const WRITER = fileURLToPath(new URL('../support/log-writer.ts', import.meta.url))

function lines (file: string): string[] {
  return readFileSync(file, 'utf8').split('\n').filter((line) => line !== '').map((line) => (JSON.parse(line) as { msg: string }).msg)
}

async function run (file: string, mode: string): Promise<{ code: number | null, signal: string | null }> {
  const child = fork(WRITER, [file, mode], { execArgv: process.execArgv, stdio: ['ignore', 'ignore', 'ignore', 'ipc'] })
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
