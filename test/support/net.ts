// The network under a test: free ports, a proxy that makes the faults a network makes, and the
// body of a request that a test's own HTTP server (a site, a backend) received.
import type { IncomingMessage } from 'node:http'
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'

export async function freePort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => { typeof address === 'object' && address !== null ? resolve(address.port) : reject(new Error('no port')) })
    })
  })
}

/**
 * A TCP proxy in front of a server of the tests' own, for network faults no process can fake:
 * `partition()` drops every byte both ways on every connection, old and new, and closes nothing
 * (a cut link); `silenceExisting()` does that to the connections open now only, while new ones
 * work (a firewall or NAT that lost their state: no FIN, no RST, ever); `heal()` ends either,
 * dropping the connections whose streams lost bytes. `delay(ms)` holds every chunk that long
 * each way (a slow link; bytes stay in order, and reach the server even if the client closed
 * meanwhile); `resetAfterReplyTo(text)` lets the next request
 * containing `text` through, then drops its reply and resets the connection (a reply lost after
 * the server acted on the request).
 */
export class TcpProxy {
  /** Connections ever made through the proxy. */
  accepted = 0
  private partitioned = false
  private delayMs = 0
  private resetAfter: string | null = null
  private readonly resetting = new WeakSet<Socket>()
  private readonly silenced = new WeakSet<Socket>()
  private readonly sockets = new Set<Socket>()
  private readonly server: Server
  constructor (targetPort: number) {
    this.server = createServer((downstream) => {
      this.accepted++
      const upstream = connect(targetPort, '127.0.0.1')
      for (const socket of [downstream, upstream]) {
        this.sockets.add(socket)
        socket.on('error', () => {})
        socket.on('close', () => { this.sockets.delete(socket) })
      }
      downstream.on('data', (data: Buffer) => {
        if (this.resetAfter !== null && data.includes(this.resetAfter)) {
          this.resetAfter = null
          this.resetting.add(downstream)
        }
        this.relay(downstream, upstream, data)
      })
      upstream.on('data', (data: Buffer) => {
        if (!this.resetting.has(downstream)) return this.relay(downstream, downstream, data)
        downstream.resetAndDestroy()
        upstream.destroy()
      })
      // With a delay, what the client sent before it closed still reaches the server (as bytes in
      // flight do), and only then is the server's side closed.
      downstream.on('close', () => {
        if (this.delayMs === 0) upstream.destroy()
        else setTimeout(() => upstream.destroy(), this.delayMs + 100)
      })
      upstream.on('close', () => downstream.destroy())
    })
  }

  async listen (): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve))
    return (this.server.address() as AddressInfo).port
  }

  /** Connections currently open through the proxy (each counted once, by its client side). */
  get connections (): number {
    return this.sockets.size / 2
  }

  partition (): void { this.partitioned = true }

  delay (ms: number): void { this.delayMs = ms }

  resetAfterReplyTo (text: string): void { this.resetAfter = text }

  silenceExisting (): void {
    for (const socket of this.sockets) this.silenced.add(socket)
  }

  heal (): void {
    this.partitioned = false
    for (const socket of this.sockets) socket.destroy()
    this.sockets.clear()
  }

  close (): void {
    this.heal()
    this.server.close()
  }

  private forwards (downstream: Socket): boolean {
    return !this.partitioned && !this.silenced.has(downstream)
  }

  /** Passes a chunk of `downstream`'s connection on to `to`, after the delay if there is one. */
  private relay (downstream: Socket, to: Socket, data: Buffer): void {
    const send = (): void => { if (this.forwards(downstream) && !to.destroyed) to.write(data) }
    if (this.delayMs === 0) send()
    else setTimeout(send, this.delayMs)
  }
}

/** The whole body of a request to a test's own node:http server, as text. */
export async function readBody (request: IncomingMessage): Promise<string> {
  let text = ''
  for await (const chunk of request) text += String(chunk)
  return text
}
