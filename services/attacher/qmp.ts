/**
 * A minimal QMP client (QEMU's JSON monitor protocol) over a unix socket: qemu-storage-daemon's
 * control channel. One command at a time; events are kept until a caller waits for one.
 * Used instead of command-line options for what must not appear in /proc/PID/cmdline or on disk
 * (a sealing passphrase) and for steps that run after the daemon is up (the exports, the luks node).
 */
import { createConnection, type Socket } from 'node:net';
import { ErrorCodes, RswapError } from '../../shared/errors.js';

type Json = Record<string, unknown>;

export interface QmpEvent {
  event: string;
  data?: Json;
}

export class Qmp {
  private buffer = '';
  private readonly lines: Json[] = [];
  private waiter: (() => void) | undefined;
  private closed: Error | undefined;
  private readonly events: QmpEvent[] = [];

  private constructor(private readonly socket: Socket, private readonly timeoutMs: number) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      for (let nl = this.buffer.indexOf('\n'); nl >= 0; nl = this.buffer.indexOf('\n')) {
        const line = this.buffer.slice(0, nl).trim();
        this.buffer = this.buffer.slice(nl + 1);
        if (!line) continue;
        let message: Json;
        try {
          message = JSON.parse(line) as Json;
        } catch {
          this.closed ??= new Error(`QMP sent a line that is not JSON: ${line.slice(0, 200)}`);
          socket.destroy();
          break;
        }
        if (typeof message.event === 'string') this.events.push({ event: message.event, data: message.data as Json | undefined });
        else this.lines.push(message);
      }
      this.wake();
    });
    const close = (error?: Error) => {
      this.closed ??= error ?? new Error('QMP connection closed');
      this.wake();
    };
    socket.on('error', close);
    socket.on('close', () => close());
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.();
  }

  /** Connects, reads the greeting and leaves capabilities negotiation mode. */
  static async connect(path: string, timeoutMs = 30_000): Promise<Qmp> {
    const socket = createConnection(path);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const qmp = new Qmp(socket, timeoutMs);
    try {
      const greeting = await qmp.next('the QMP greeting');
      if (!('QMP' in greeting)) throw new RswapError(ErrorCodes.COMMAND_FAILED, `QMP at ${path}: no greeting: ${JSON.stringify(greeting).slice(0, 200)}`);
      await qmp.execute('qmp_capabilities');
      return qmp;
    } catch (error) {
      qmp.close();
      throw error;
    }
  }

  private next(what: string): Promise<Json> {
    return this.until(() => this.lines.shift(), what);
  }

  /** Resolves with what `take` finds once it finds something, as messages arrive. */
  private async until<T>(take: () => T | undefined, what: string): Promise<T> {
    const deadline = Date.now() + this.timeoutMs;
    for (;;) {
      const found = take();
      if (found !== undefined) return found;
      if (this.closed) throw new RswapError(ErrorCodes.COMMAND_FAILED, `QMP: ${this.closed.message} while waiting for ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) {
        // A late answer must never be taken for the next command's: the connection is done.
        this.close();
        throw new RswapError(ErrorCodes.TIMEOUT, `QMP: no ${what} within ${this.timeoutMs}ms`);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /** Runs one command; its error, if any, is thrown with QEMU's description (never its arguments). */
  execute(command: string, args?: Json): Promise<unknown> {
    return this.send(command, Buffer.from(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`));
  }

  /**
   * Runs one command given as its whole JSON line, for a command that carries a secret: the caller
   * builds the line in a Buffer and zeroes it after, so the secret never becomes a JS string.
   */
  async send(command: string, line: Uint8Array): Promise<unknown> {
    if (this.closed) throw new RswapError(ErrorCodes.COMMAND_FAILED, `QMP: ${this.closed.message}; cannot run ${command}`);
    this.socket.write(line);
    const answer = await this.next(`an answer to ${command}`);
    if ('error' in answer) {
      const error = answer.error as { class?: string; desc?: string };
      throw new RswapError(ErrorCodes.COMMAND_FAILED, `QMP ${command} failed: ${error.desc ?? error.class ?? JSON.stringify(error)}`);
    }
    return answer.return;
  }

  /** Resolves with (and consumes) the first event that `match` accepts, once it arrives. */
  waitEvent(match: (e: QmpEvent) => boolean, what: string): Promise<QmpEvent> {
    return this.until(() => {
      const at = this.events.findIndex(match);
      return at < 0 ? undefined : this.events.splice(at, 1)[0];
    }, what);
  }

  close(): void {
    this.closed ??= new Error('QMP connection closed');
    this.socket.destroy();
  }
}
