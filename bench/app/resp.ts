/**
 * A minimal Redis client (RESP2 over a Unix socket) for the application bench: no dependency, and
 * nothing between the request and the clock but a socket write and one reply parse. It sends
 * commands in order and resolves each with its reply; `pipeline` keeps many in flight.
 */
import { connect, type Socket } from 'node:net';

export type Reply = string | number | Buffer | null | Reply[] | RedisError;

export class RedisError extends Error {}

/** Parses one RESP reply at `offset`; undefined when the buffer does not hold all of it yet. */
export function parseReply(buf: Buffer, offset: number): { value: Reply; next: number } | undefined {
  if (offset >= buf.length) return undefined;
  const lineEnd = buf.indexOf('\r\n', offset);
  if (lineEnd < 0) return undefined;
  const type = String.fromCharCode(buf[offset]!);
  const line = buf.toString('latin1', offset + 1, lineEnd);
  const after = lineEnd + 2;
  switch (type) {
    case '+':
      return { value: line, next: after };
    case '-':
      return { value: new RedisError(line), next: after };
    case ':':
      return { value: Number(line), next: after };
    case '$': {
      const length = Number(line);
      if (length < 0) return { value: null, next: after };
      if (buf.length < after + length + 2) return undefined;
      return { value: buf.subarray(after, after + length), next: after + length + 2 };
    }
    case '*': {
      const count = Number(line);
      if (count < 0) return { value: null, next: after };
      const items: Reply[] = [];
      let next = after;
      for (let i = 0; i < count; i += 1) {
        const item = parseReply(buf, next);
        if (!item) return undefined;
        items.push(item.value);
        next = item.next;
      }
      return { value: items, next };
    }
    default:
      throw new Error(`not a RESP reply: type byte ${buf[offset]}`);
  }
}

/** A command as RESP: an array of bulk strings. */
export function encode(args: (string | Buffer)[]): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const arg of args) {
    const bytes = typeof arg === 'string' ? Buffer.from(arg) : arg;
    parts.push(Buffer.from(`$${bytes.length}\r\n`), bytes, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

export class RedisClient {
  private pending: { resolve: (r: Reply) => void; reject: (e: Error) => void }[] = [];
  private buffer: Buffer = Buffer.alloc(0);
  private closed: Error | undefined;

  private constructor(private readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    const fail = (error: Error) => {
      this.closed ??= error;
      for (const p of this.pending.splice(0)) p.reject(this.closed);
    };
    socket.on('error', fail);
    socket.on('close', () => fail(new Error('the Redis connection closed')));
  }

  static connect(path: string): Promise<RedisClient> {
    return new Promise((resolve, reject) => {
      const socket = connect(path);
      socket.setNoDelay(true);
      socket.once('connect', () => resolve(new RedisClient(socket)));
      socket.once('error', reject);
    });
  }

  private onData(chunk: Buffer): void {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    let offset = 0;
    for (;;) {
      const parsed = parseReply(this.buffer, offset);
      if (!parsed) break;
      offset = parsed.next;
      this.pending.shift()?.resolve(parsed.value);
    }
    this.buffer = offset === this.buffer.length ? Buffer.alloc(0) : this.buffer.subarray(offset);
  }

  /** Sends one command; resolves with its reply, rejects with a RedisError reply. */
  async call(args: (string | Buffer)[]): Promise<Reply> {
    const reply = await this.send(args);
    if (reply instanceof RedisError) throw reply;
    return reply;
  }

  private send(args: (string | Buffer)[]): Promise<Reply> {
    if (this.closed) return Promise.reject(this.closed);
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.socket.write(encode(args));
    });
  }

  /** Sends every command at once and waits for all the replies; throws the first error reply. */
  async pipeline(commands: (string | Buffer)[][]): Promise<Reply[]> {
    const replies = await Promise.all(commands.map((c) => this.send(c)));
    const error = replies.find((r) => r instanceof RedisError);
    if (error) throw error;
    return replies;
  }

  close(): void {
    this.socket.destroy();
  }
}
