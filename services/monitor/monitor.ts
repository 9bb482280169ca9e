/**
 * One monitor loop: sample the scope on an interval, and at once when the kernel signals pressure;
 * feed the detector; publish what changed.
 *
 * - pressure (host.H.pressure): on entering pressure, then every `pressureRepeatMs` while it lasts,
 *   with the current need, so the broker can grow the host's leases;
 * - relief (host.H.relief): on leaving pressure, and repeated with each heartbeat while clear, so
 *   a broker that restarted still learns it;
 * - surplus (host.H.surplus): when what the host can lend moves by `surplusStepBytes`, when its
 *   deficit starts or ends, and at least every `surplusRefreshMs` (offers expire at the broker);
 * - telemetry (host.H.telemetry): every `heartbeatMs`, for observers.
 *
 * Offers and pressure are events, so a broker that was not listening when they went out (it
 * started later, restarted, or lost NATS for a while) would not know them until their next
 * repeat. It says hello when it starts or reconnects: the monitor answers at once with its offer
 * and relief, and with its pressure at the next sample. A broker that has a pressure it cannot
 * serve solicits offers: a monitor with something to lend answers at once.
 */
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../../shared/log.js';
import { publishJson } from '../../shared/messaging.js';
import { readMounts, readSwaps } from '../../shared/procfs.js';
import { subjects } from '../../shared/subjects.js';
import { leaseDevices } from '../../shared/attach-record.js';
import type { PressureEvent, ReliefEvent, Signals, SurplusEvent, TelemetryEvent } from '../../shared/schemas.js';
import { Detector, FILL_WINDOW_MS, neededBytes, signalsBetween, surplus, swapGrowthBytesPerS, swapPagesBetween, type DetectorOptions } from './detector.js';
import type { Reading, Source } from './sources.js';
import type { Waker } from './notify.js';
import { Counter, Gauge } from 'prom-client';
import { registry } from '../../shared/metrics.js';

export interface MonitorOptions extends DetectorOptions {
  host: string;
  intervalMs: number;
  pressureRepeatMs: number;
  heartbeatMs: number;
  reserveBytes: number;
  surplusStepBytes: number;
  surplusRefreshMs: number;
  /** Where this host's exporter keeps lease mounts; their images are what it lends. */
  exporterStateDir: string;
  /** Where this host's attacher records its leases; their swap areas are what it borrows. */
  attacherStateDir: string;
}

/**
 * What this host lends now, from its exporter's ramfs mounts: the images' sizes (promised) and the
 * pages they hold (resident, already inside used memory). Ramfs images are sparse: a page is
 * allocated when the borrower first writes it.
 */
export async function lending(exporterStateDir: string): Promise<{ lentBytes: number; residentBytes: number }> {
  const leasesDir = join(exporterStateDir, 'leases');
  const mounted = new Set((await readMounts()).filter((m) => m.fstype === 'ramfs').map((m) => m.target));
  let lentBytes = 0;
  let residentBytes = 0;
  for (const leaseId of await readdir(leasesDir).catch(() => [] as string[])) {
    const dir = join(leasesDir, leaseId);
    if (!mounted.has(dir)) continue;
    const image = await stat(join(dir, 'image')).catch(() => undefined);
    if (!image) continue;
    lentBytes += image.size;
    residentBytes += Math.min(image.size, image.blocks * 512);
  }
  return { lentBytes, residentBytes };
}

/**
 * The swap areas of this host's own leases, from its attacher's records (`leases/<id>/attach.json`
 * names each lease's device), and how many other areas the machine has. Only its own leases are
 * this host's room: where hosts share a kernel (the namespace testbed), another host's lease is in
 * /proc/swaps too, and its swap-off would read as this host filling.
 */
export async function leaseSwap(attacherStateDir: string): Promise<{ freeBytes: number; usedBytes: number; otherAreas: number }> {
  // A record torn by a crash (or not a record) counts as nothing, as it does for the attacher.
  const devices = await leaseDevices(attacherStateDir);
  let freeBytes = 0;
  let usedBytes = 0;
  let otherAreas = 0;
  for (const area of await readSwaps()) {
    if (!devices.has(area.path)) {
      otherAreas += 1;
      continue;
    }
    freeBytes += Math.max(0, area.sizeBytes - area.usedBytes);
    usedBytes += area.usedBytes;
  }
  return { freeBytes, usedBytes, otherAreas };
}

const MIN_SPACING_MS = 100;

const gauges = {
  pressure: new Gauge({ name: 'rswap_monitor_pressure', help: '1 while the scope is under pressure', registers: [registry] }),
  available: new Gauge({ name: 'rswap_monitor_available_bytes', help: 'Memory the scope can still use without swapping', registers: [registry] }),
  lendable: new Gauge({ name: 'rswap_monitor_lendable_bytes', help: 'What the host offers', registers: [registry] }),
};
/** A counter: the rate is Prometheus's to take, over whatever window the reader wants. */
const swapPages = new Counter({ name: 'rswap_monitor_swap_pages_total', help: 'Pages of swap traffic of the scope: major faults + swap-outs + refaults', registers: [registry] });

export class Monitor {
  readonly detector: Detector;
  /** Readings of the last FILL_WINDOW_MS and the newest one before it (the fill rate's base). */
  private recent: Reading[] = [];
  /** The latest reading. */
  private get previous(): Reading | undefined {
    return this.recent.at(-1);
  }
  private lastPressureAt = 0;
  private lastHeartbeatAt = 0;
  private lastSurplus: (SurplusEvent & { at: number }) | undefined;
  private stopped = false;
  private loop: Promise<void> | undefined;
  private subscriptions: Subscription[] = [];

  constructor(
    private readonly nc: NatsConnection,
    private readonly source: Source,
    private readonly waker: Waker | undefined,
    private readonly options: MonitorOptions,
    private readonly log: Logger,
  ) {
    this.detector = new Detector(options);
  }

  start(): void {
    this.loop = this.run();
    this.subscriptions = [
      this.nc.subscribe(subjects.brokerHello, { callback: () => void this.answerBroker('hello') }),
      this.nc.subscribe(subjects.brokerSolicit, { callback: () => void this.answerBroker('solicit') }),
    ];
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const sub of this.subscriptions) sub.unsubscribe();
    await this.loop;
    this.waker?.close();
  }

  /**
   * A broker said hello (it knows nothing yet) or solicits offers (it has a pressure to serve):
   * resend the offer from the latest reading now; after a hello also the relief now, or the
   * pressure at the next sample (its need comes from two readings).
   */
  async answerBroker(why: 'hello' | 'solicit'): Promise<void> {
    const reading = this.previous;
    if (!reading || this.stopped) return; // not measured yet: the first sample publishes anyway
    try {
      if (why === 'hello') {
        if (this.detector.state === 'pressure') this.lastPressureAt = 0;
        else this.publishRelief(reading.at);
      }
      const sent = await this.maybePublishSurplus(reading, reading.at, why === 'hello' ? 'always' : 'if-lendable');
      this.log.debug({ why, sent }, 'answered a broker');
    } catch (error) {
      this.log.warn({ why, err: (error as Error).message }, 'could not answer a broker');
    }
  }

  private async run(): Promise<void> {
    let nextSampleAt = Date.now();
    while (!this.stopped) {
      const now = Date.now();
      if (now >= nextSampleAt) {
        await this.tick().catch((error: unknown) => this.log.warn({ err: (error as Error).message }, 'monitor sample failed'));
        nextSampleAt = Date.now() + this.options.intervalMs;
        continue;
      }
      // Sleep until the next sample, or less if the kernel signals pressure first.
      const woke = this.waker ? await this.waker.wait(nextSampleAt - now) : await sleep(nextSampleAt - now);
      // Sample at once, but not more often than every MIN_SPACING_MS: rates over a few ms are noise.
      if (woke) nextSampleAt = Math.min(nextSampleAt, (this.previous?.at ?? 0) + MIN_SPACING_MS);
    }
  }

  /** Whether the host had no swap but its leases when the monitor started (decided at the first sample). */
  private swapless: boolean | undefined;

  /** One sample: read, detect, publish. */
  async tick(): Promise<void> {
    const reading = await this.source.read();
    // A lender's memory fills as its borrowers write their lease pages: that is promised memory
    // arriving, not the host running out (see runningOut in detector.ts).
    const lent = await lending(this.options.exporterStateDir);
    reading.headroomBytes = reading.availableBytes - Math.max(0, lent.lentBytes - lent.residentBytes);
    reading.lentBytes = lent.lentBytes;
    // A host that had no swap but its leases when the monitor started: its leases are its swap.
    if (this.swapless !== false) {
      const swap = await leaseSwap(this.options.attacherStateDir);
      if (this.swapless === undefined) {
        this.swapless = swap.otherAreas === 0;
        this.log.info({ otherSwapAreas: swap.otherAreas, attacherStateDir: this.options.attacherStateDir }, this.swapless ? 'no swap but this host\'s leases: watching the fill rate (--headroom-lead-s)' : 'swap of its own: leaving early warning to the thrashing signals');
      }
      if (this.swapless) {
        reading.swapFreeBytes = swap.freeBytes;
        // A cgroup that does not count its swap: what its host's leases hold is the best figure.
        if (reading.swapUncounted) reading.swapUsedBytes = swap.usedBytes;
      }
    }
    const previous = this.previous;
    this.recent.push(reading);
    while (this.recent.length > 2 && this.recent[1]!.at <= reading.at - FILL_WINDOW_MS) this.recent.shift();
    if (!previous) return;
    const signals = signalsBetween(previous, reading, this.recent[0]);
    const change = this.detector.update(signals, reading.at);
    this.log.debug({ at: reading.at, state: this.detector.state, signals }, 'sample');
    gauges.pressure.set(this.detector.state === 'pressure' ? 1 : 0);
    gauges.available.set(reading.availableBytes);
    const traffic = swapPagesBetween(previous, reading);
    swapPages.inc(traffic.swapPages + traffic.refaults);
    const me = this.options.host;

    if (change?.kind === 'enter' || (this.detector.state === 'pressure' && reading.at - this.lastPressureAt >= this.options.pressureRepeatMs)) {
      const event: PressureEvent = {
        host: me,
        neededBytes: neededBytes(signals, swapGrowthBytesPerS(previous, reading), this.options),
        at: reading.at,
        source: 'monitor',
        signals,
        ...(change?.kind === 'enter' ? { onsetAt: change.onsetAt } : {}),
      };
      publishJson(this.nc, subjects.pressure(me), event);
      this.lastPressureAt = reading.at;
      if (change) this.log.info({ neededBytes: event.neededBytes, signals, onsetAt: change.kind === 'enter' ? change.onsetAt : undefined }, 'pressure: entered');
    }
    if (change?.kind === 'exit') {
      this.publishRelief(reading.at);
      this.log.info({ signals }, 'pressure: cleared');
    }

    await this.maybePublishSurplus(reading, reading.at, undefined, lent);
    if (reading.at - this.lastHeartbeatAt >= this.options.heartbeatMs) {
      this.lastHeartbeatAt = reading.at;
      this.publishTelemetry(reading, signals);
      if (this.detector.state === 'clear') this.publishRelief(reading.at);
    }
  }

  private publishRelief(at: number): void {
    const event: ReliefEvent = { host: this.options.host, at, source: 'monitor' };
    publishJson(this.nc, subjects.relief(this.options.host), event);
  }

  private publishTelemetry(reading: Reading, signals: Signals): void {
    const event: TelemetryEvent = {
      host: this.options.host,
      at: reading.at,
      scope: this.source.scope,
      state: this.detector.state,
      limitBytes: reading.limitBytes,
      usedBytes: reading.usedBytes,
      signals,
    };
    publishJson(this.nc, subjects.telemetry(this.options.host), event);
  }

  /**
   * Publishes what the host can lend when it changed enough (or `force`: 'always', or
   * 'if-lendable' when there is something to lend). Returns whether it published.
   */
  private async maybePublishSurplus(
    reading: Reading,
    at: number,
    force?: 'always' | 'if-lendable',
    /** What the host lends, when the caller has just read it. */
    lendingNow?: { lentBytes: number; residentBytes: number },
  ): Promise<boolean> {
    const { lentBytes: lent, residentBytes } = lendingNow ?? (await lending(this.options.exporterStateDir));
    // Promised pages not yet written still belong to the borrowers: count them as used.
    const offer = surplus(reading.availableBytes - (lent - residentBytes), this.options.reserveBytes, this.detector.state === 'pressure');
    const last = this.lastSurplus;
    const changed =
      force === 'always' ||
      (force === 'if-lendable' && offer.lendableBytes > 0) ||
      !last ||
      Math.abs(offer.lendableBytes - last.lendableBytes) >= this.options.surplusStepBytes ||
      lent !== last.lentBytes ||
      (offer.deficitBytes > 0) !== (last.deficitBytes > 0) ||
      at - last.at >= this.options.surplusRefreshMs;
    gauges.lendable.set(offer.lendableBytes);
    if (!changed) return false;
    const event = { host: this.options.host, ...offer, lentBytes: lent, at, source: 'monitor' as const };
    publishJson(this.nc, subjects.surplus(this.options.host), event);
    if (offer.deficitBytes > 0 && !(last && last.deficitBytes > 0)) {
      this.log.warn({ availableBytes: reading.availableBytes, reserveBytes: this.options.reserveBytes, lentBytes: lent }, 'available memory under the reserve');
    }
    this.lastSurplus = event;
    return true;
  }
}

const sleep = (ms: number) => new Promise<boolean>((resolve) => setTimeout(() => resolve(false), ms));

