// A process that logs through bufferedDestination (as src/server.ts does) and then ends as told:
// `exit` (process.exit at once), `throw` (an uncaught error), `wait` (until killed), `gone`
// (it logs to standard output, a pipe, and exits when told: the parent closed the pipe first) or
// `many` (`count` lines in all into `file`, a FIFO other writers share, as a destination
// `shared` with other processes, then process.exit).
import { openSync } from 'node:fs'
import { pino } from 'pino'
import { bufferedDestination } from '../../plugins/logging.js'

const [file = '', mode = 'exit', count = '0'] = process.argv.slice(2)
const log = pino({}, bufferedDestination(mode === 'gone' ? 1 : openSync(file, 'a'), { shared: mode === 'many' }).stream)
log.info({ n: 1 }, 'first line')
log.info({ n: 2 }, 'second line')
if (mode === 'many') {
  for (let n = 3; n <= Number(count); n++) log.info({ n, padding: 'x'.repeat(100) }, 'one of many lines')
  process.exit(0)
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
