// A process that logs through bufferedDestination (as src/server.ts does) and then ends as told:
// `exit` (process.exit at once), `throw` (an uncaught error), `wait` (until killed), `gone`
// (it logs to standard output, a pipe, and exits when told: the parent closed the pipe first) or
// `many` (`count` lines in all into `file`, a FIFO other writers share, as a destination
// `shared` with other processes, then process.exit) or `stalled` (`count` lines into `file`, a FIFO
// nobody reads yet, a thousand per turn; then it tells its parent how many were dropped and how
// much memory its buffers hold, and exits when told).
import { openSync } from 'node:fs'
import { pino } from 'pino'
import { bufferedDestination } from '../../plugins/logging.js'

const [file = '', mode = 'exit', count = '0'] = process.argv.slice(2)
const destination = bufferedDestination(mode === 'gone' ? 1 : openSync(file, 'a'), { shared: mode === 'many' })
const log = pino({}, destination.stream)
log.info({ n: 1 }, 'first line')
log.info({ n: 2 }, 'second line')
if (mode === 'many') {
  for (let n = 3; n <= Number(count); n++) log.info({ n, padding: 'x'.repeat(100) }, 'one of many lines')
  process.exit(0)
}
if (mode === 'stalled') {
  let dropped = 0
  destination.onDrop(() => { dropped++ })
  for (let n = 3; n <= Number(count); n++) {
    log.info({ n, padding: 'x'.repeat(100) }, 'one of many lines')
    if (n % 1000 === 0) await new Promise(setImmediate)
  }
  // What the buffers hold, not what the dropped lines left for the collector (run with --expose-gc).
  globalThis.gc?.()
  process.send?.({ dropped, arrayBuffers: process.memoryUsage().arrayBuffers })
  process.once('message', () => process.exit(0))
  setInterval(() => {}, 1000)
}
if (mode === 'exit') process.exit(0)
if (mode === 'throw') throw new Error('boom')
const alive = setInterval(() => {}, 1000)
// `gone`: told to, it ends as a server does once closed (nothing left to do), not by process.exit.
if (mode === 'gone') {
  process.once('message', () => {
    log.info('third line')
    clearInterval(alive)
    process.disconnect()
  })
}
process.send?.('logged')
