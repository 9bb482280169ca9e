/**
 * `rswap top`: the fleet on one screen, redrawn as it changes. Hosts (pressure, offer, lent,
 * borrowed, reserved), the leases that are live or ended in the last minute (state, age, size,
 * who lends to whom, device) and the latest events (pressure, relief, lost leases, lease states).
 *
 * It reads the two KV buckets every interval and redraws at once on every event it hears, so a
 * lease shows up as it moves, not at the next poll. Fits an 80-column terminal; `q` or Ctrl-C
 * quits and gives the terminal back as it was. `--once` prints one frame (no terminal codes).
 */
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { PREFIX, subjects } from '../shared/subjects.js';
import { readFleet } from './operator.js';
import { LeaseStateEvent, LostEvent, PressureEvent, ReliefEvent, type HostRecord, type LeaseRecord, type LeaseState } from '../shared/schemas.js';
import { formatBytes } from '../shared/units.js';
import { reservedBytes } from '../services/broker/policy.js';
import { LEASE_STATES } from '../shared/lease-states.js';

export interface TopEvent {
  at: number;
  text: string;
}

export interface TopState {
  hosts: HostRecord[];
  leases: LeaseRecord[];
  /** Newest last. */
  events: TopEvent[];
}

/** How long an ended lease stays on the screen after it ended. */
export const ENDED_SHOWN_MS = 60_000;
const EVENTS_KEPT = 100;

const isEnded = (state: LeaseState) => LEASE_STATES[state].step === 'none';
const clock = (at: number) => new Date(at).toISOString().slice(11, 19);
const age = (ms: number) => (ms < 120_000 ? `${Math.max(0, Math.round(ms / 1000))}s` : ms < 7_200_000 ? `${Math.round(ms / 60_000)}m` : `${Math.round(ms / 3_600_000)}h`);
const size = (bytes: number) => (bytes > 0 ? formatBytes(bytes) : '-');

/** The lease's device, short: a sealed lease's mapping is named after the lease already. */
const deviceOf = (l: LeaseRecord) => (l.device === undefined ? '-' : l.device.startsWith('/dev/mapper/rswap-') ? 'dm (sealed)' : l.device);

/** Fixed-width columns; the last one takes what is left, and every line is cut to `width`. */
function columns(rows: string[][], widths: number[], width: number): string[] {
  return rows.map((row) => row.map((cell, i) => (i < widths.length ? cell.slice(0, widths[i]! - 1).padEnd(widths[i]!) : cell)).join('').trimEnd().slice(0, width));
}

/** One frame, `width` columns and at most `height` lines. Pure: the tests call it directly. */
export function renderTop(state: TopState, now: number, { width = 80, height = 24 }: { width?: number; height?: number } = {}): string[] {
  const live = state.leases.filter((l) => !isEnded(l.state));
  const shown = state.leases
    .filter((l) => !isEnded(l.state) || now - l.updatedAt < ENDED_SHOWN_MS)
    .sort((a, b) => Number(isEnded(a.state)) - Number(isEnded(b.state)) || a.createdAt - b.createdAt);
  const sum = (leases: LeaseRecord[]) => leases.reduce((s, l) => s + l.sizeBytes, 0);
  const header = `rswap top  ${clock(now)}  ${state.hosts.length} hosts  ${live.length} live leases  ${size(sum(live))} lent`;

  const hostRows = [['HOST', 'PRESSURE', 'OFFER', 'LENT', 'BORROWED', 'RESERVED']];
  for (const h of state.hosts) {
    const underPressure = h.pressure && !(h.clearSince !== undefined && h.clearSince >= h.pressure.at);
    hostRows.push([
      `${h.host}${h.cordoned ? ' (c)' : ''}`,
      underPressure ? size(h.pressure!.neededBytes) : '-',
      h.offer ? size(h.offer.lendableBytes) : '-',
      size(sum(live.filter((l) => l.lender === h.host))),
      size(sum(live.filter((l) => l.borrower === h.host))),
      size(reservedBytes(h)),
    ]);
  }
  const leaseRows = [['LEASE', 'STATE', 'AGE', 'SIZE', 'BORROWER<LENDER', 'DEVICE']];
  for (const l of shown) leaseRows.push([l.id, l.state, age(now - l.createdAt), size(l.sizeBytes), `${l.borrower}<${l.lender}`, deviceOf(l)]);

  const hosts = columns(hostRows, [22, 12, 12, 12, 12], width);
  const leases = columns(leaseRows, [16, 10, 5, 8, 26], width);
  // Hosts and leases first; events get the lines that are left (at least the heading).
  const lines = [header.slice(0, width), '', ...hosts, '', ...leases];
  const room = height - lines.length - 2;
  if (room < 0) return [...lines.slice(0, height - 1), `... ${lines.length - height + 1} more lines: a taller terminal shows them`.slice(0, width)];
  const events = room > 0 ? state.events.slice(-room) : [];
  return [...lines, '', 'EVENTS', ...events.map((e) => `${clock(e.at)}  ${e.text}`.slice(0, width))];
}

/** The event line a message on `subject` makes, or undefined for one top does not show. */
export function eventText(subject: string, data: unknown): string | undefined {
  const kind = subject.split('.').at(-1);
  if (subject.startsWith(`${PREFIX}.lease.`)) {
    const parsed = LeaseStateEvent.safeParse(data);
    if (!parsed.success) return undefined;
    const l = parsed.data.lease;
    return `${l.id} ${l.state}  ${l.borrower}<${l.lender} ${formatBytes(l.sizeBytes)}${l.reason ? `  ${l.reason}` : ''}`;
  }
  if (kind === 'pressure') {
    const p = PressureEvent.safeParse(data);
    return p.success ? `${p.data.host} pressure: needs ${formatBytes(p.data.neededBytes)} (${p.data.source})` : undefined;
  }
  if (kind === 'relief') {
    const r = ReliefEvent.safeParse(data);
    return r.success ? `${r.data.host} relief` : undefined;
  }
  if (kind === 'lost') {
    const l = LostEvent.safeParse(data);
    return l.success ? `${l.data.host} lost ${l.data.leaseId}: ${l.data.reason}` : undefined;
  }
  return undefined;
}

export interface TopOptions {
  intervalMs: number;
  /** One frame to stdout, then return. */
  once: boolean;
  out?: NodeJS.WriteStream;
  input?: NodeJS.ReadStream;
}

/** Runs the view until `q`, Ctrl-C or SIGTERM (or once). */
export async function runTop(nc: NatsConnection, options: TopOptions): Promise<void> {
  const out = options.out ?? process.stdout;
  const input = options.input ?? process.stdin;
  const state: TopState = { hosts: [], leases: [], events: [] };
  const frame = () => renderTop(state, Date.now(), { width: out.columns || 80, height: out.rows || 24 });
  if (options.once) {
    Object.assign(state, await readFleet(nc));
    out.write(`${frame().join('\n')}\n`);
    return;
  }

  const draw = () => out.write(`\x1b[H\x1b[2J${frame().join('\r\n')}`);
  const subscriptions: Subscription[] = [];
  for (const subject of [subjects.allPressure, subjects.allRelief, subjects.allLost, subjects.allLeaseStates]) {
    subscriptions.push(nc.subscribe(subject, {
      callback: (_error, msg) => {
        let data: unknown;
        try {
          data = msg.json();
        } catch {
          return;
        }
        const text = eventText(msg.subject, data);
        if (!text) return;
        state.events.push({ at: Date.now(), text });
        state.events.splice(0, Math.max(0, state.events.length - EVENTS_KEPT));
        const moved = LeaseStateEvent.safeParse(data);
        if (moved.success) state.leases = [...state.leases.filter((l) => l.id !== moved.data.lease.id), moved.data.lease];
        draw();
      },
    }));
  }

  out.write('\x1b[?1049h\x1b[?25l'); // the alternate screen, no cursor: the terminal comes back as it was
  const raw = input.isTTY === true;
  if (raw) input.setRawMode(true);
  let stop!: () => void;
  const stopped = new Promise<void>((resolve) => (stop = resolve));
  const onKey = (key: Buffer) => {
    if (key[0] === 0x71 || key[0] === 0x03) stop(); // q, Ctrl-C
  };
  input.on('data', onKey);
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  out.on('resize', draw);
  let failed: unknown;
  let reading = false;
  const refresh = async () => {
    if (reading) return; // a slow read is not started twice
    reading = true;
    try {
      Object.assign(state, await readFleet(nc));
      draw();
    } catch (error) {
      failed = error;
      stop();
    } finally {
      reading = false;
    }
  };
  await refresh();
  const timer = setInterval(() => void refresh(), options.intervalMs);
  try {
    await stopped;
  } finally {
    clearInterval(timer);
    for (const s of subscriptions) s.unsubscribe();
    input.off('data', onKey);
    if (raw) input.setRawMode(false);
    input.pause();
    out.off('resize', draw);
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
    out.write('\x1b[?25h\x1b[?1049l');
  }
  if (failed) throw failed;
}
